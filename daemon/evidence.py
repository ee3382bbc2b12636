"""Evidence of flagged flows for the DPO: a durable SQLite store and one JSON log line per flow.

A flow whose verdict is neither `allowed` nor None is *flagged*. Both sinks here keep the same fields,
built once by `evidence_fields` from the flow record:

- times (start, end), protocol, direction, destination port;
- the internal endpoint as a pseudonym (`h:…`, see pseudonym.py; clear only when configured), its zone;
- the external endpoint's address in clear (a server's address, not a patient's; it lets the DPO check
  a destination again when the geo data changes; `remote_addresses: false` drops it);
- hostname, service, ASN and AS name, provider, location and controller country and zone, exposure,
  jurisdiction;
- data categories with the *names* of their evidence (`{"health": ["zone:pacs", "identifier:nir"]}`);
- packets and bytes each way, and the sampling interval N when they are estimates (a flow record
  from an exporter that counts 1 packet in N, its counters multiplied by N; None: exact counts);
- verdict, rule, and the policy exception that applied, if any.

Only these fields are read from a record; everything else (the client's port, fields of future
stages) is never looked at. Each field is checked against a strict shape: names are lower-case
letters, digits and `._+^-` with `:` separators, at most 64 characters; free text (AS name, exception
justification) is words and light punctuation, at most 200; countries are two capitals; numbers are
bounded integers. A last-resort identifier guard refuses any run of nine or more digits, even split
by spaces, dots, dashes or slashes (NIR, INS, RPPS, INE and ADELI numbers all have one). A refused
value is dropped (None, or left out of its list) and the field's *name* goes to `refused`, so that the
DPO sees that something was withheld and a developer sees the bug.

Durability (DESIGN.md: "a crash or kill -9 loses no committed record"): every flagged flow is its own
transaction, committed before `record()` returns; the database is in WAL mode. With the default
`synchronous: full`, SQLite fsyncs the WAL at each commit, so once `record()` has returned the flow
survives kill -9, a crash of the process, of the system, or a power cut (on a disk that honours
fsync). `synchronous: normal` skips that fsync: a record still survives kill -9 and any crash of the
process (it is in the operating system's cache), but a power cut may lose the last commits; never
the database's consistency. There is no batching: flagged flows are few, and one commit is cheap.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog

from douane.daemon.hostname import clean_hostname
from douane.daemon.pseudonym import Pseudonymiser, already_canonical

Record = dict[str, Any]

APPLICATION_ID = 0x64756576  # "duev": marks the file as a douane evidence store (PRAGMA application_id)
SQLITE_MAGIC = b"SQLite format 3\x00"
WARNING_VERDICTS = frozenset({"warning", "critical"})

MAX_NAME = 64
MAX_TEXT = 200
MAX_LIST = 16  # exposure laws
MAX_CATEGORIES = 8
MAX_EVIDENCE = 32  # evidence names per category
MAX_COUNTER = 2**63 - 1

# Lower case, like every slug of the project: an upper-case patient name (HL7 writes them so) or a
# payload fragment cannot pass for a name.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._+^-]|:(?=[a-z0-9]))*")
# Words (any script, digits), spaces and light punctuation; no |^~\&<>{}[]"= (HL7, JSON, XML, URLs).
_TEXT = re.compile(r"[\w .,;:'’()/+@#*!?«»°%-]+")
_COUNTRY = re.compile(r"[A-Z]{2}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Nine digits or more, possibly grouped: every French personal identifier (NIR/INS 13+2, RPPS 11,
# ADELI 9, INE 10-11) has one; a date (8) or a version number has not.
_IDENTIFIER_LIKE = re.compile(r"\d(?:[ ._/:-]?\d){8,}")
_HOST_IDENTIFIER_LIKE = re.compile(r"\d{9,}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


class EvidenceError(RuntimeError):
    """The evidence store cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class EvidenceConfig:
    """The evidence store (YAML section `evidence`).

    Attributes:
        path: the SQLite file; its directory is created (0700) and the file made 0600.
        retention_days: flows that started longer ago are deleted (at start, then every
            `prune_interval_seconds` while recording). 365 by default: a year of transfers for
            the register; the DPO's retention policy may want less.
        synchronous: `full` (fsync per record: survives power loss) or `normal` (survives any crash
            of the process; a power cut may lose the last records). See the module docstring.
        remote_addresses: keep the external endpoint's address in clear (False: not stored).
        check_on_start: run `PRAGMA quick_check` when starting (reads the whole file once: about
            2 ms per MB measured, 10 000 flows weigh 4.7 MB) so that a damaged store is found at
            start, not mid-capture.
        prune_interval_seconds: how often `record()` applies retention.
        read_only: open for reading only (reports): no creation, migration or pruning.
    """

    path: Path
    retention_days: int = 365
    synchronous: str = "full"
    remote_addresses: bool = True
    check_on_start: bool = True
    prune_interval_seconds: float = 3600.0
    read_only: bool = False

    def __post_init__(self) -> None:
        if self.retention_days < 1:
            raise ValueError("evidence.retention_days: expected a positive whole number of days")
        if self.synchronous not in {"full", "normal"}:
            raise ValueError("evidence.synchronous: expected full or normal")
        if self.prune_interval_seconds <= 0:
            raise ValueError("evidence.prune_interval_seconds: expected a positive number")


# --- schema ------------------------------------------------------------------------------------------
# Times are integer milliseconds since the epoch, UTC. One row per flagged flow in `flagged_flow`;
# one row per (flow, data category) in `flagged_category` with the evidence names as a JSON list, so
# that a report groups by category with a join. Indexes serve the report (issue 8): a time range,
# alone or with provider, service, jurisdiction, zone or category.


def _v1(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE flagged_flow (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
            start_ms INTEGER NOT NULL,
            end_ms INTEGER NOT NULL,
            recorded_ms INTEGER NOT NULL,          -- when the store wrote it
            proto TEXT,
            direction TEXT,
            src TEXT,                              -- the opener; pseudonym when internal
            dst TEXT,
            dport INTEGER,
            zone TEXT,                             -- the internal endpoint's zone
            hostname TEXT,
            service TEXT,
            asn INTEGER,
            as_name TEXT,
            provider TEXT,
            location_country TEXT,
            location_zone TEXT,
            controller_country TEXT,
            controller_zone TEXT,
            exposure TEXT NOT NULL DEFAULT '[]',   -- JSON list of law slugs
            jurisdiction TEXT,
            packets_out INTEGER,
            bytes_out INTEGER,
            packets_in INTEGER,
            bytes_in INTEGER,
            verdict TEXT NOT NULL,
            rule TEXT,
            exception_rule TEXT,
            exception_justification TEXT,
            exception_expires TEXT,                -- YYYY-MM-DD
            refused TEXT NOT NULL DEFAULT '[]'     -- JSON list of field names withheld by validation
        )"""
    )
    db.execute(
        """CREATE TABLE flagged_category (
            flow_id INTEGER NOT NULL,
            category TEXT NOT NULL,
            evidence TEXT NOT NULL,                -- JSON list of evidence names
            PRIMARY KEY (flow_id, category)
        ) WITHOUT ROWID"""
    )
    for name, columns in (
        ("flagged_flow_start", "start_ms"),
        ("flagged_flow_provider", "provider, start_ms"),
        ("flagged_flow_service", "service, start_ms"),
        ("flagged_flow_jurisdiction", "jurisdiction, start_ms"),
        ("flagged_flow_zone", "zone, start_ms"),
    ):
        db.execute(f"CREATE INDEX {name} ON flagged_flow ({columns})")
    db.execute("CREATE INDEX flagged_category_category ON flagged_category (category, flow_id)")


def _v2(db: sqlite3.Connection) -> None:
    # Issue 7: counts from a sampling exporter are estimates, N times what it saw; NULL: exact
    # counts (captured flows, and every flow recorded before this column existed).
    db.execute("ALTER TABLE flagged_flow ADD COLUMN sampling_interval INTEGER")


# MIGRATIONS[n] takes a store at schema version n to n + 1, inside one transaction. Append only:
# a released function never changes, since stores in the field were built by it.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]

_FLOW_COLUMNS = (
    "start_ms", "end_ms", "recorded_ms", "proto", "direction", "src", "dst", "dport", "zone",
    "hostname", "service", "asn", "as_name", "provider", "location_country", "location_zone",
    "controller_country", "controller_zone", "exposure", "jurisdiction", "packets_out", "bytes_out",
    "packets_in", "bytes_in", "verdict", "rule", "exception_rule", "exception_justification",
    "exception_expires", "refused", "sampling_interval",
)  # fmt: skip
# Built from the constant column names above, never from data.
_COLUMN_LIST = ", ".join(_FLOW_COLUMNS)
_PLACEHOLDERS = ", ".join("?" * len(_FLOW_COLUMNS))
_INSERT_FLOW = f"INSERT INTO flagged_flow ({_COLUMN_LIST}) VALUES ({_PLACEHOLDERS})"  # noqa: S608
# Columns a migration added, with the schema version that added them. A read-only reader (`douane
# report`) of an older store, which it may not migrate, reads them as NULL: what the migration puts
# in the rows it finds.
_ADDED_IN = {"sampling_interval": 2}


def _select_flows(version: int) -> str:
    """The flows query for a store at schema `version` (1 or later)."""
    columns = ", ".join(f"NULL AS {c}" if _ADDED_IN.get(c, 1) > version else c for c in _FLOW_COLUMNS)
    return (
        f"SELECT id, {columns} FROM flagged_flow "  # noqa: S608 - column names from this module
        "WHERE start_ms >= ? AND start_ms < ? ORDER BY start_ms, id"
    )


_SELECT_FLOWS = _select_flows(len(MIGRATIONS))
_INSERT_CATEGORY = "INSERT INTO flagged_category (flow_id, category, evidence) VALUES (?, ?, ?)"


def schema_version() -> int:
    """The schema version this code writes (`PRAGMA user_version`)."""
    return len(MIGRATIONS)


# --- validation --------------------------------------------------------------------------------------


# The same names and texts recur in every flagged flow (providers, rules, evidence): each check runs once
# per distinct short string. Long or non-str values are refused before they reach a cache.
@lru_cache(maxsize=4096)
def _valid_name(value: str) -> bool:
    return bool(_NAME.fullmatch(value)) and not _IDENTIFIER_LIKE.search(value)


@lru_cache(maxsize=1024)
def _valid_text(value: str) -> bool:
    return bool(_TEXT.fullmatch(value)) and not _IDENTIFIER_LIKE.search(value)


def is_evidence_name(value: object) -> bool:
    """Whether `value` may be stored as a name (category, evidence, zone, rule, provider, service…).

    At most 64 characters: lower-case letters, digits and `._+^-`, with single `:` separators, no run
    of nine digits. config.py and the policy loader can refuse other names at load time.
    """
    return isinstance(value, str) and len(value) <= MAX_NAME and _valid_name(value)


def _name(value: Any) -> str | None:
    return value if is_evidence_name(value) else None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= MAX_TEXT and _valid_text(value):
        return value
    return None


def _country(value: Any) -> str | None:
    return value if isinstance(value, str) and _COUNTRY.fullmatch(value) else None


def _hostname(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = clean_hostname(value)
    return name if name is not None and not _HOST_IDENTIFIER_LIKE.search(name) else None


def _integer(limit: int) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
            return value
        return None

    return check


_counter = _integer(MAX_COUNTER)
_port = _integer(65535)
_asn = _integer(2**32 - 1)


def _sampling(value: Any) -> int | None:
    """A sampling interval: 2 or more (1 in N packets), at most IE 34's 32 bits. The record gives
    null for exact counts, so a stored value always means an estimate."""
    return value if _asn(value) is not None and value >= 2 else None

# Record key -> checker; the record's other keys are never read.
_SCALARS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("proto", _name),
    ("direction", _name),
    ("dport", _port),
    ("zone", _name),
    ("hostname", _hostname),
    ("service", _name),
    ("asn", _asn),
    ("as_name", _text),
    ("provider", _name),
    ("location_country", _country),
    ("location_zone", _name),
    ("controller_country", _country),
    ("controller_zone", _name),
    ("jurisdiction", _name),
    ("packets_out", _counter),
    ("bytes_out", _counter),
    ("packets_in", _counter),
    ("bytes_in", _counter),
    ("sampling_interval", _sampling),
    ("rule", _name),
)


def _millis(value: Any) -> int | None:
    """Milliseconds since the epoch from an ISO 8601 text (the flow record's form) or a datetime.

    Naive datetimes are UTC. Integer arithmetic: no float rounding moves a millisecond.
    """
    if isinstance(value, str) and len(value) <= 40:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int((value - _EPOCH) // _MILLISECOND)


@lru_cache(maxsize=4096)
def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_millis(ms: int) -> str:
    """The flow record's time text (UTC, milliseconds, Z) from milliseconds since the epoch."""
    return f"{_utc_second(ms // 1000)}.{ms % 1000:03d}Z"


def _address(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 45:
        return None
    return _canonical_address(value)


@lru_cache(maxsize=8192)
def _canonical_address(value: str) -> str | None:
    if already_canonical(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _expiry(value: Any) -> str | None:
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            return None
    return None


def _names(value: Any, limit: int, refused: list[str], field: str) -> list[str]:
    """Valid, distinct names of `value` (a list or tuple), in order; anything else is refused."""
    if value is None:
        return []
    if not isinstance(value, list | tuple | frozenset | set):
        refused.append(field)
        return []
    kept: list[str] = []
    for item in value:
        name = _name(item)
        if name is None or len(kept) >= limit:
            if field not in refused:
                refused.append(field)
        elif name not in kept:
            kept.append(name)
    return kept


def _categories(value: Any, refused: list[str]) -> dict[str, list[str]]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        refused.append("data_categories")
        return {}
    kept: dict[str, list[str]] = {}
    bad = False
    for category, evidence in value.items():
        name = _name(category)
        if name is None or len(kept) >= MAX_CATEGORIES:
            bad = True
            continue
        scratch: list[str] = []
        names = _names(evidence, MAX_EVIDENCE, scratch, "data_categories")
        bad = bad or bool(scratch)
        kept[name] = names
    if bad:
        refused.append("data_categories")
    return kept


def _exception(value: Any, refused: list[str]) -> dict[str, str | None] | None:
    """The policy exception: a mapping with `rule`, `justification`, `expires`, or a justification text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"justification": value}
    if not isinstance(value, Mapping):
        refused.append("exception")
        return None
    out = {
        "rule": _name(value.get("rule")),
        "justification": _text(value.get("justification")),
        "expires": _expiry(value.get("expires")),
    }
    for key, kept in out.items():
        if kept is None and value.get(key) is not None:
            refused.append(f"exception.{key}")
    return out if any(v is not None for v in out.values()) else None


# direction -> (src is internal, dst is internal); any other direction pseudonymises both, the safe way.
_INSIDE = {"outbound": (True, False), "inbound": (False, True), "external": (False, False)}


def _endpoints(
    rec: Mapping[str, Any], pseudonymiser: Pseudonymiser, remote: bool, refused: list[str]
) -> tuple[str | None, str | None]:
    """src and dst as stored: internal sides pseudonymised, external sides clear (or None)."""
    direction = rec.get("direction")
    inside = _INSIDE.get(direction, (True, True)) if isinstance(direction, str) else (True, True)
    shown: list[str | None] = []
    for field, internal in zip(("src", "dst"), inside, strict=True):
        raw = rec.get(field)
        address = _address(raw)
        if address is None:
            if raw is not None:
                refused.append(field)
            shown.append(None)
        elif internal:
            shown.append(pseudonymiser.address(address))
        else:
            shown.append(address if remote else None)
    return shown[0], shown[1]


def evidence_fields(
    rec: Mapping[str, Any], pseudonymiser: Pseudonymiser, *, remote_addresses: bool = True
) -> Record | None:
    """The fields kept for a flagged flow, validated; None when the flow is not flagged.

    The result's keys are those of `EvidenceStore.query()` except `id`, plus `_ms`: (start, end) in
    milliseconds for the store. Never raises on the record's content: a bad value is dropped and
    named in `refused`.
    """
    verdict = rec.get("verdict")
    if verdict is None or verdict == "allowed":
        return None
    refused: list[str] = []
    checked_verdict = _name(verdict)
    if checked_verdict is None:
        # A flagged flow with an unreadable verdict is still evidence: kept as `unknown`.
        refused.append("verdict")
        checked_verdict = "unknown"
    start = _millis(rec.get("start"))
    end = _millis(rec.get("end"))
    now = round(time.time() * 1000)
    if start is None:
        refused.append("start")
    if end is None:
        refused.append("end")
    start = start if start is not None else end if end is not None else now
    end = end if end is not None else start
    src, dst = _endpoints(rec, pseudonymiser, remote_addresses, refused)
    out: Record = {
        "start": iso_millis(start),
        "end": iso_millis(end),
        "src": src,
        "dst": dst,
    }
    for key, check in _SCALARS:
        raw = rec.get(key)
        value = check(raw) if raw is not None else None
        if value is None and raw is not None:
            refused.append(key)
        out[key] = value
    out["exposure"] = _names(rec.get("exposure"), MAX_LIST, refused, "exposure")
    out["data_categories"] = _categories(rec.get("data_categories"), refused)
    out["verdict"] = checked_verdict
    out["exception"] = _exception(rec.get("exception"), refused)
    out["refused"] = refused
    out["_ms"] = (start, end)
    return out


# --- the store ---------------------------------------------------------------------------------------


class EvidenceStore:
    """Flagged flows in SQLite (WAL): `record` is a pipeline sink; `query` and `prune` for reports.

    One connection, used under a lock, so that the capture thread records while another thread
    prunes or queries. Other processes (`douane report`) open their own store with `read_only`.
    """

    def __init__(self, config: EvidenceConfig, pseudonymiser: Pseudonymiser, logger: Any = None) -> None:
        self.config = config
        self.pseudonymiser = pseudonymiser
        self._log = logger if logger is not None else structlog.get_logger("douane.evidence")
        self._db: sqlite3.Connection | None = None
        self._select = _SELECT_FLOWS
        self._lock = threading.Lock()
        self._next_prune = 0.0
        # Plain counters for a metrics collector: flows written, values withheld, records that failed.
        self.written = 0
        self.refused_values = 0
        self.errors = 0

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Opens the store, creating it (0600) and migrating it to the current schema.

        Raises:
            EvidenceError: the file cannot be opened or created, is not an SQLite database or not a
                douane store, is damaged (`quick_check`), or was written by a newer douane.
        """
        if self._db is not None:
            return
        path = self.config.path
        if not self.config.read_only:
            self._create_file(path)
        self._check_header(path)
        try:
            db = self._connect(path)
        except sqlite3.Error as exc:
            raise EvidenceError(f"{path}: cannot open the evidence store ({exc})") from exc
        try:
            self._prepare(db, path)
        except BaseException:
            db.close()
            raise
        self._db = db
        if not self.config.read_only:
            try:
                self.prune()
            except sqlite3.DatabaseError as exc:
                self.stop()
                raise EvidenceError(f"{path}: unusable evidence store ({exc})") from exc
        self._log.info(
            "evidence_store_started",
            path=str(path),
            schema=schema_version(),
            read_only=self.config.read_only,
        )

    def stop(self) -> None:
        """Closes the store (each record is already committed; this only checkpoints the WAL)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            try:
                if not self.config.read_only:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                self._log.warning("evidence_checkpoint_failed", error=str(exc))
            finally:
                db.close()

    def _create_file(self, path: Path) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise EvidenceError(f"{path}: cannot create the evidence store ({exc})") from exc
        os.close(fd)

    def _check_header(self, path: Path) -> None:
        """Refuses, before SQLite sees it, a file that is not an SQLite database at all."""
        try:
            with path.open("rb") as file:
                head = file.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise EvidenceError(f"{path}: cannot read the evidence store ({exc})") from exc
        if head and head != SQLITE_MAGIC:
            raise EvidenceError(
                f"{path}: not an SQLite database (damaged, or another file); move it aside "
                "to start a new evidence store, or restore it from backup"
            )

    def _connect(self, path: Path) -> sqlite3.Connection:
        if self.config.read_only:
            uri = path.absolute().as_uri() + "?mode=ro"  # as_uri escapes ?, # and % in the path
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    def _prepare(self, db: sqlite3.Connection, path: Path) -> None:
        current = schema_version()
        try:
            application = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise EvidenceError(f"{path}: unreadable evidence store ({exc})") from exc
        if application != APPLICATION_ID and (application != 0 or tables):
            raise EvidenceError(f"{path}: an SQLite database, but not a douane evidence store")
        if version > current:
            raise EvidenceError(
                f"{path}: written by a newer douane (schema version {version}; this one knows up to "
                f"{current}); refusing to use it: upgrade douane or point evidence.path elsewhere"
            )
        try:
            if self.config.check_on_start:
                problems = [str(row[0]).replace("\n", "; ") for row in db.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise EvidenceError(
                        f"{path}: the evidence store is damaged ({'; '.join(problems)}); move it "
                        "aside to start a new one (sqlite3 .recover may save its records)"
                    )
            if self.config.read_only:
                if version < 1:
                    raise EvidenceError(
                        f"{path}: schema version {version}, this douane reads 1 to {current}; start the "
                        "daemon once to create its tables"
                    )
                # An older store (the daemon not restarted since an upgrade) is read as it is.
                self._select = _select_flows(version)
                return
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise EvidenceError(f"{path}: the file system refuses WAL mode (journal_mode {mode})")
            db.execute(f"PRAGMA synchronous = {self.config.synchronous.upper()}")
            self._migrate(db, path, version)
        except sqlite3.DatabaseError as exc:
            raise EvidenceError(f"{path}: unusable evidence store ({exc})") from exc

    def _migrate(self, db: sqlite3.Connection, path: Path, version: int) -> None:
        for target in range(version + 1, schema_version() + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[target - 1](db)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {target}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._log.info("evidence_store_migrated", path=str(path), schema=target)

    # -- writing --------------------------------------------------------------------------------

    def record(self, rec: Mapping[str, Any]) -> None:
        """Sink: stores a flagged flow, committed before returning; other flows are ignored.

        Raises:
            EvidenceError: the store is not started or read-only.
            sqlite3.Error: the write failed (disk full, I/O error); the pipeline counts and logs it.
        """
        fields = evidence_fields(rec, self.pseudonymiser, remote_addresses=self.config.remote_addresses)
        if fields is None:
            return
        self.store(fields)

    def store(self, fields: Record) -> int:
        """Writes fields made by `evidence_fields`; returns the flow's id."""
        start_ms, end_ms = fields["_ms"]
        exception = fields["exception"] or {}
        refused = fields["refused"]
        row = (
            start_ms, end_ms, round(time.time() * 1000), fields["proto"], fields["direction"],
            fields["src"], fields["dst"], fields["dport"], fields["zone"], fields["hostname"],
            fields["service"], fields["asn"], fields["as_name"], fields["provider"],
            fields["location_country"], fields["location_zone"], fields["controller_country"],
            fields["controller_zone"], json.dumps(fields["exposure"]), fields["jurisdiction"],
            fields["packets_out"], fields["bytes_out"], fields["packets_in"], fields["bytes_in"],
            fields["verdict"], fields["rule"], exception.get("rule"), exception.get("justification"),
            exception.get("expires"), json.dumps(refused), fields["sampling_interval"],
        )  # fmt: skip
        with self._lock:
            db = self._writable()
            try:
                db.execute("BEGIN")
                flow_id = db.execute(_INSERT_FLOW, row).lastrowid or 0
                if fields["data_categories"]:
                    db.executemany(
                        _INSERT_CATEGORY,
                        [(flow_id, c, json.dumps(e)) for c, e in fields["data_categories"].items()],
                    )
                db.execute("COMMIT")
            except BaseException:
                self.errors += 1
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self.written += 1
            self.refused_values += len(refused)
        if refused:
            self._log.warning("evidence_values_refused", flow_id=flow_id, fields=refused)
        if time.monotonic() >= self._next_prune:
            try:
                self.prune()
            except sqlite3.Error as exc:  # the record is committed; retention waits for the next try
                self._log.warning("evidence_prune_failed", error=str(exc))
        return flow_id

    def _writable(self) -> sqlite3.Connection:
        if self._db is None:
            raise EvidenceError(f"{self.config.path}: the evidence store is not started")
        if self.config.read_only:
            raise EvidenceError(f"{self.config.path}: the evidence store is open read-only")
        return self._db

    def prune(self, now: datetime | None = None) -> int:
        """Deletes flows that started more than `retention_days` before `now`; returns how many."""
        cutoff = (_millis(now or datetime.now(UTC)) or 0) - self.config.retention_days * 86_400_000
        with self._lock:
            db = self._writable()
            self._next_prune = time.monotonic() + self.config.prune_interval_seconds
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM flagged_category WHERE flow_id IN "
                    "(SELECT id FROM flagged_flow WHERE start_ms < ?)",
                    (cutoff,),
                )
                deleted = db.execute("DELETE FROM flagged_flow WHERE start_ms < ?", (cutoff,)).rowcount
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        if deleted:
            self._log.info("evidence_pruned", deleted=deleted, retention_days=self.config.retention_days)
        return deleted

    # -- reading --------------------------------------------------------------------------------

    def query(self, since: datetime, until: datetime | None = None) -> list[Record]:
        """Flagged flows that started in [since, until), oldest first; naive datetimes are UTC.

        Each is a dict with `id` and the keys of `evidence_fields` (times as ISO text, exposure and
        refused as lists, data_categories as a dict, exception as a dict or None).
        """
        low = _millis(since)
        high = _millis(until) if until is not None else MAX_COUNTER
        with self._lock:
            if self._db is None:
                raise EvidenceError(f"{self.config.path}: the evidence store is not started")
            db = self._db
            # One read transaction: both statements see the same snapshot.
            db.execute("BEGIN")
            try:
                cursor = db.execute(self._select, (low, high))
                names = [d[0] for d in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor]
                categories: dict[int, dict[str, list[str]]] = {}
                for flow_id, category, evidence in db.execute(
                    "SELECT c.flow_id, c.category, c.evidence FROM flagged_category c "
                    "JOIN flagged_flow f ON f.id = c.flow_id WHERE f.start_ms >= ? AND f.start_ms < ?",
                    (low, high),
                ):
                    categories.setdefault(flow_id, {})[category] = json.loads(evidence)
            finally:
                db.execute("COMMIT")
        return [_row_record(row, categories.get(row["id"], {})) for row in rows]


def _row_record(row: dict[str, Any], categories: dict[str, list[str]]) -> Record:
    rule, justification, expires = (
        row.pop("exception_rule"),
        row.pop("exception_justification"),
        row.pop("exception_expires"),
    )
    row.pop("recorded_ms")
    out: Record = {
        "id": row.pop("id"),
        "start": iso_millis(row.pop("start_ms")),
        "end": iso_millis(row.pop("end_ms")),
    }
    out.update(row)
    out["exposure"] = json.loads(row["exposure"])
    out["refused"] = json.loads(row["refused"])
    out["data_categories"] = categories
    has_exception = rule is not None or justification is not None or expires is not None
    out["exception"] = (
        {"rule": rule, "justification": justification, "expires": expires} if has_exception else None
    )
    return out


# --- the log line ------------------------------------------------------------------------------------


def evidence_log_sink(
    pseudonymiser: Pseudonymiser, logger: Any = None, *, remote_addresses: bool = True
) -> Callable[[Mapping[str, Any]], None]:
    """Sink: one structlog `flagged_flow` event per flagged flow, with the store's fields.

    Warning level for `warning` and `critical` verdicts, info for `notice` (and any other).
    """
    log = logger if logger is not None else structlog.get_logger("douane.evidence")

    def sink(rec: Mapping[str, Any]) -> None:
        fields = evidence_fields(rec, pseudonymiser, remote_addresses=remote_addresses)
        if fields is None:
            return
        del fields["_ms"]
        if fields["verdict"] in WARNING_VERDICTS:
            log.warning("flagged_flow", **fields)
        else:
            log.info("flagged_flow", **fields)

    sink.__name__ = "evidence_log_sink"
    return sink
