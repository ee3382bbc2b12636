"""The evidence store and log line: what is kept of a flagged flow, durably, and what never is."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from douane.daemon import evidence
from douane.daemon.evidence import (
    EvidenceConfig,
    EvidenceError,
    EvidenceStore,
    evidence_fields,
    evidence_log_sink,
    schema_version,
)
from douane.daemon.pseudonym import Pseudonymiser

SECRET = b"s" * 32
INSIDE = "10.20.0.15"
OUTSIDE = "20.199.120.7"

# Values that must never reach the store or a log: a NIR (with a valid key), spaced and unspaced,
# and fragments of an HL7 message.
NIR = "184057512345617"
NIR_SPACED = "1 84 05 75 123 456 17"
NIR_DASHED = "1-84-05-75-123-456-17"
PAYLOAD = "MSH|^~\\&|EPIC|HOPITAL"
PATIENT = "DUPONT^JEAN"
SECRETS = (NIR, NIR_SPACED, NIR_DASHED, "1840575123456", PAYLOAD, PATIENT, "DUPONT")


def flow(**changes: Any) -> dict[str, Any]:
    """A flagged flow record as the pipeline makes it (DESIGN.md's example plus zone)."""
    rec: dict[str, Any] = {
        "start": "2026-11-28T10:00:00.123Z",
        "end": "2026-11-28T10:00:04.870Z",
        "proto": "tcp",
        "src": INSIDE,
        "sport": 50123,
        "dst": OUTSIDE,
        "dport": 443,
        "vlan": None,
        "direction": "outbound",
        "packets_out": 12,
        "bytes_out": 4210,
        "packets_in": 10,
        "bytes_in": 18211,
        "hostname": "hdh.blob.core.windows.net",
        "hostname_source": "tls_sni",
        "ech": False,
        "service": "azure-storage",
        "asn": 8075,
        "as_name": "Microsoft Corporation",
        "location_country": "FR",
        "location_zone": "eea",
        "provider": "microsoft",
        "controller_country": "US",
        "controller_zone": "third",
        "exposure": ["us-cloud-act", "us-fisa-702"],
        "jurisdiction": "us",
        "zone": "pacs",
        "data_categories": {"health": ["zone:pacs", "protocol:dicom", "identifier:nir"]},
        "verdict": "critical",
        "rule": "health-outside-eu",
        "exception": None,
    }
    rec.update(changes)
    return rec


@pytest.fixture
def pseudo() -> Pseudonymiser:
    return Pseudonymiser(SECRET)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "evidence.sqlite"


@pytest.fixture
def store(db_path: Path, pseudo: Pseudonymiser) -> Iterator[EvidenceStore]:
    s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
    s.start()
    yield s
    s.stop()


EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
DAY_BEFORE_MS = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()) * 1000  # the day before flow()'s


def files_bytes(path: Path) -> bytes:
    """The database with its WAL and shared-memory index: every byte SQLite wrote for it."""
    return b"".join(
        Path(str(path) + suffix).read_bytes()
        for suffix in ("", "-wal", "-shm")
        if Path(str(path) + suffix).exists()
    )


class TestEvidenceConfig:
    def test_defaults(self, tmp_path: Path) -> None:
        """Defaults: a year, fsync per record, remote addresses kept, checked at start."""
        c = EvidenceConfig(path=tmp_path / "e.sqlite")
        assert (c.retention_days, c.synchronous, c.remote_addresses, c.check_on_start) == (
            365,
            "full",
            True,
            True,
        )

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"retention_days": 0}, "retention_days"),
            ({"synchronous": "off"}, "full or normal"),
            ({"prune_interval_seconds": 0}, "prune_interval_seconds"),
        ],
    )
    def test_invalid(self, tmp_path: Path, changes: dict[str, Any], message: str) -> None:
        """A meaningless setting is refused with the key's name."""
        with pytest.raises(ValueError, match=message):
            EvidenceConfig(path=tmp_path / "e.sqlite", **changes)


class TestEvidenceFields:
    def test_not_flagged(self, pseudo: Pseudonymiser) -> None:
        """Allowed flows and flows without a verdict give nothing."""
        assert evidence_fields(flow(verdict="allowed"), pseudo) is None
        assert evidence_fields(flow(verdict=None), pseudo) is None

    def test_kept_fields(self, pseudo: Pseudonymiser) -> None:
        """A clean record keeps its values; the internal source becomes its pseudonym."""
        fields = evidence_fields(flow(), pseudo)
        assert fields is not None
        assert fields["src"] == pseudo.address(INSIDE)
        assert fields["dst"] == OUTSIDE
        assert fields["start"] == "2026-11-28T10:00:00.123Z"
        assert fields["end"] == "2026-11-28T10:00:04.870Z"
        assert fields["data_categories"] == {"health": ["zone:pacs", "protocol:dicom", "identifier:nir"]}
        assert fields["refused"] == []
        assert "sport" not in fields
        assert "hostname_source" not in fields
        assert fields["sampling_interval"] is None  # exact counts

    def test_sampled_counts(self, pseudo: Pseudonymiser) -> None:
        """A flow whose counts are estimates from 1-in-N sampling keeps N beside them."""
        fields = evidence_fields(flow(sampled=True, sampling_interval=100), pseudo)
        assert fields is not None
        assert (fields["bytes_out"], fields["sampling_interval"], fields["refused"]) == (4210, 100, [])

    @pytest.mark.parametrize(
        ("direction", "src", "dst"),
        [
            ("outbound", "pseudo", "clear"),
            ("inbound", "clear", "pseudo"),
            ("internal", "pseudo", "pseudo"),
            ("external", "clear", "clear"),
            ("sideways", "pseudo", "pseudo"),  # an unknown direction is treated as internal
            (None, "pseudo", "pseudo"),
        ],
    )
    def test_endpoints(self, pseudo: Pseudonymiser, direction: str | None, src: str, dst: str) -> None:
        """Internal sides are pseudonymised by direction; external ones stay clear."""
        fields = evidence_fields(flow(direction=direction, src="10.0.0.1", dst="10.0.0.2"), pseudo)
        assert fields is not None
        shown = {"pseudo": pseudo.address, "clear": str}
        assert fields["src"] == shown[src]("10.0.0.1")
        assert fields["dst"] == shown[dst]("10.0.0.2")

    def test_remote_addresses_off(self, pseudo: Pseudonymiser) -> None:
        """remote_addresses=False drops the external address, keeps the pseudonym."""
        fields = evidence_fields(flow(), pseudo, remote_addresses=False)
        assert fields is not None
        assert (fields["src"], fields["dst"]) == (pseudo.address(INSIDE), None)

    def test_clear_when_disabled(self) -> None:
        """With pseudonyms off, the internal address is kept in clear."""
        fields = evidence_fields(flow(), Pseudonymiser(SECRET, enabled=False))
        assert fields is not None
        assert fields["src"] == INSIDE

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("asn", -1),
            ("asn", 2**32),
            ("asn", True),
            ("bytes_out", "4210"),
            ("dport", 70000),
            ("location_country", "France"),
            ("provider", "Micro soft"),
            ("rule", "x" * 65),
            ("hostname", "not a host"),
            ("as_name", "x" * 201),
            ("src", "10.0.0.999"),
            ("zone", 12),
            ("sampling_interval", 1),
            ("sampling_interval", 2**32),
            ("sampling_interval", "100"),
        ],
    )
    def test_bad_value_dropped_and_named(self, pseudo: Pseudonymiser, key: str, value: Any) -> None:
        """An ill-formed value becomes None and its field name goes to `refused`."""
        fields = evidence_fields(flow(**{key: value}), pseudo)
        assert fields is not None
        assert fields[key] is None
        assert fields["refused"] == [key]

    def test_bad_evidence_name_dropped(self, pseudo: Pseudonymiser) -> None:
        """One bad evidence name is left out; the category and its other evidence stay."""
        cats = {"health": ["zone:pacs", "identifier:nir value", "protocol:dicom"], "bad key": ["x"]}
        fields = evidence_fields(flow(data_categories=cats), pseudo)
        assert fields is not None
        assert fields["data_categories"] == {"health": ["zone:pacs", "protocol:dicom"]}
        assert fields["refused"] == ["data_categories"]

    def test_bounds(self, pseudo: Pseudonymiser) -> None:
        """Lists are bounded: 8 categories, 32 evidence names each, 16 exposure laws."""
        cats = {f"c{i}": [f"e:{j}" for j in range(40)] for i in range(10)}
        fields = evidence_fields(flow(data_categories=cats, exposure=[f"law-{i}" for i in range(20)]), pseudo)
        assert fields is not None
        assert len(fields["data_categories"]) == 8
        assert all(len(names) == 32 for names in fields["data_categories"].values())
        assert len(fields["exposure"]) == 16
        assert set(fields["refused"]) == {"data_categories", "exposure"}

    def test_times(self, pseudo: Pseudonymiser) -> None:
        """Times keep their milliseconds; datetimes are accepted; a bad time falls back and is named."""
        when = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
        fields = evidence_fields(flow(start=when, end="garbage"), pseudo)
        assert fields is not None
        assert (fields["start"], fields["end"]) == ("2026-01-02T03:04:05.006Z", "2026-01-02T03:04:05.006Z")
        assert fields["refused"] == ["end"]

    def test_exception_forms(self, pseudo: Pseudonymiser) -> None:
        """An exception is kept as rule, justification and expiry; a plain text is a justification."""
        exc = {"rule": "school-to-us-controlled", "justification": "DPIA 2026-04, registre n° 12",
               "expires": "2027-06-30", "provider": "microsoft"}  # fmt: skip
        fields = evidence_fields(flow(exception=exc), pseudo)
        assert fields is not None
        assert fields["exception"] == {
            "rule": "school-to-us-controlled",
            "justification": "DPIA 2026-04, registre n° 12",
            "expires": "2027-06-30",
        }
        fields = evidence_fields(flow(exception="DPIA 2026-04"), pseudo)
        assert fields is not None
        assert fields["exception"] == {"rule": None, "justification": "DPIA 2026-04", "expires": None}

    def test_unknown_verdict_is_still_evidence(self, pseudo: Pseudonymiser) -> None:
        """A flagged flow with an unreadable verdict is kept as `unknown`, the field named."""
        fields = evidence_fields(flow(verdict=["critical"]), pseudo)
        assert fields is not None
        assert fields["verdict"] == "unknown"
        assert fields["refused"] == ["verdict"]

    @given(st.text(max_size=80))
    def test_any_evidence_name_is_safe(self, name: str) -> None:
        """Whatever text arrives as an evidence name, what is kept is a short name with no long digit run."""
        fields = evidence_fields(flow(data_categories={"health": [name]}), Pseudonymiser(SECRET))
        assert fields is not None
        for kept in fields["data_categories"]["health"]:
            assert kept == name
            assert len(kept) <= 64
            assert re.fullmatch(r"[a-z0-9._+^:-]+", kept)
            assert not re.search(r"\d(?:\D?\d){8}", kept)


class TestEvidenceStore:
    def test_round_trip(self, store: EvidenceStore, pseudo: Pseudonymiser) -> None:
        """A recorded flow reads back with the fields of `evidence_fields` and an id."""
        exc = {"rule": "health-outside-eu", "justification": "DPIA 2026-04", "expires": "2027-06-30"}
        store.record(flow(exception=exc))
        [row] = store.query(EPOCH)
        expected = evidence_fields(flow(exception=exc), pseudo)
        assert expected is not None
        del expected["_ms"]
        assert row.pop("id") == 1
        assert row == expected

    def test_not_flagged_not_stored(self, store: EvidenceStore) -> None:
        """Allowed flows and flows without a verdict are not stored."""
        store.record(flow(verdict="allowed"))
        store.record(flow(verdict=None))
        assert store.query(EPOCH) == []
        assert store.written == 0

    def test_query_range(self, store: EvidenceStore) -> None:
        """`since` is inclusive, `until` exclusive, by start time; results oldest first."""
        for hour in (12, 10, 11):
            store.record(flow(start=f"2026-11-28T{hour}:00:00.000Z", end=f"2026-11-28T{hour}:00:01.000Z"))
        day = datetime(2026, 11, 28, tzinfo=UTC)
        got = store.query(day + timedelta(hours=10), day + timedelta(hours=12))
        assert [r["start"] for r in got] == ["2026-11-28T10:00:00.000Z", "2026-11-28T11:00:00.000Z"]
        assert len(store.query(day.replace(tzinfo=None))) == 3  # naive means UTC

    def test_no_categories(self, store: EvidenceStore) -> None:
        """A flow flagged for its destination alone is stored with no category rows."""
        store.record(flow(data_categories={}))
        [row] = store.query(EPOCH)
        assert row["data_categories"] == {}

    def test_wal_and_synchronous(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """The store is in WAL mode, synchronous FULL by default and NORMAL when configured."""
        for setting, expected in (("full", 2), ("normal", 1)):
            s = EvidenceStore(EvidenceConfig(path=db_path, synchronous=setting), pseudo)
            s.start()
            assert s._db is not None
            assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert s._db.execute("PRAGMA synchronous").fetchone()[0] == expected
            s.stop()

    def test_file_modes(self, store: EvidenceStore, db_path: Path) -> None:
        """The database and its WAL are readable by the owner only, in a 0700 directory."""
        store.record(flow())
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(str(db_path) + "-wal").stat().st_mode) == 0o600
        assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700

    def test_reopen_keeps_records(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """Records survive stop and start; ids keep growing."""
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        s.start()
        s.record(flow())
        s.stop()
        s.start()
        s.record(flow())
        assert [r["id"] for r in s.query(EPOCH)] == [1, 2]
        s.stop()

    def test_not_started(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """Recording or querying before start is an EvidenceError naming the file."""
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        assert not db_path.exists()  # the constructor does no I/O
        with pytest.raises(EvidenceError, match="not started"):
            s.record(flow())
        with pytest.raises(EvidenceError, match="not started"):
            s.query(EPOCH)
        s.stop()  # stopping a store never started is harmless

    def test_start_twice(self, store: EvidenceStore) -> None:
        """A second start() on a started store keeps the open connection."""
        db = store._db
        store.start()
        assert store._db is db

    def test_indexes_serve_the_report(self, store: EvidenceStore) -> None:
        """Time-range queries, alone or with provider, service, jurisdiction, zone, category, use an index."""
        assert store._db is not None
        queries = [
            "SELECT * FROM flagged_flow WHERE start_ms >= 0 AND start_ms < 1",
            *(
                f"SELECT * FROM flagged_flow WHERE {col} = 'x' AND start_ms >= 0 AND start_ms < 1"
                for col in ("provider", "service", "jurisdiction", "zone")
            ),
            "SELECT * FROM flagged_category WHERE category = 'health'",
        ]
        for query in queries:
            plan = " ".join(row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + query))
            assert "USING INDEX" in plan or "USING PRIMARY KEY" in plan, (query, plan)


class TestRetention:
    def test_prune(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """Flows older than retention_days go, with their category rows; newer ones stay."""
        s = EvidenceStore(EvidenceConfig(path=db_path, retention_days=30), pseudo)
        s.start()
        s.record(flow(start="2026-01-01T00:00:00.000Z", end="2026-01-01T00:00:01.000Z"))
        s.record(flow(start="2026-03-01T00:00:00.000Z", end="2026-03-01T00:00:01.000Z"))
        assert s.prune(datetime(2026, 3, 15, tzinfo=UTC)) == 1
        assert [r["start"] for r in s.query(EPOCH)] == ["2026-03-01T00:00:00.000Z"]
        assert s._db is not None
        assert s._db.execute("SELECT count(*) FROM flagged_category").fetchone()[0] == 1
        assert s.prune(datetime(2026, 3, 15, tzinfo=UTC)) == 0
        s.stop()

    def test_prune_while_recording(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """record() applies retention every prune_interval_seconds, without a caller."""
        config = EvidenceConfig(path=db_path, retention_days=1, prune_interval_seconds=0.01)
        s = EvidenceStore(config, pseudo)
        s.start()
        s.record(flow(start="2001-01-01T00:00:00.000Z", end="2001-01-01T00:00:01.000Z"))
        time.sleep(0.02)
        s.record(flow(start=datetime.now(UTC), end=datetime.now(UTC)))
        assert len(s.query(EPOCH)) == 1
        s.stop()

    def test_prune_at_start(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """start() applies retention, for a daemon that was down for long."""
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        s.start()
        s.record(flow(start="2001-01-01T00:00:00.000Z", end="2001-01-01T00:00:01.000Z"))
        s.stop()
        s.start()
        assert s.query(EPOCH) == []
        s.stop()


def _next_adds_notes(db: sqlite3.Connection) -> None:
    """A later schema as a test makes it: a column filled from existing rows."""
    db.execute("ALTER TABLE flagged_flow ADD COLUMN note TEXT")
    db.execute("UPDATE flagged_flow SET note = 'migrated ' || provider")


def _next_fails(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE flagged_flow ADD COLUMN note TEXT")
    db.execute("SELECT * FROM no_such_table")


class TestMigrations:
    def test_creates_current_version(self, store: EvidenceStore) -> None:
        """A new store is at the current schema version and marked as douane's."""
        assert store._db is not None
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == schema_version() == 2
        assert store._db.execute("PRAGMA application_id").fetchone()[0] == evidence.APPLICATION_ID

    def test_migrates_older_store(
        self, db_path: Path, pseudo: Pseudonymiser, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A store with records is taken to the next version by the next migration, records kept."""
        current = schema_version()
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        s.start()
        s.record(flow())
        s.stop()
        monkeypatch.setattr(evidence, "MIGRATIONS", [*evidence.MIGRATIONS, _next_adds_notes])
        with structlog.testing.capture_logs() as logs:
            s.start()
        assert {"event": "evidence_store_migrated", "path": str(db_path), "schema": current + 1,
                "log_level": "info"} in logs  # fmt: skip
        assert s._db is not None
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == current + 1
        assert s._db.execute("SELECT note FROM flagged_flow").fetchall() == [("migrated microsoft",)]
        assert len(s.query(EPOCH)) == 1
        s.stop()

    def test_failed_migration_rolls_back(
        self, db_path: Path, pseudo: Pseudonymiser, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A migration that fails leaves the store at its old version, unchanged, and says so."""
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        s.start()
        s.record(flow())
        s.stop()
        current = schema_version()
        monkeypatch.setattr(evidence, "MIGRATIONS", [*evidence.MIGRATIONS, _next_fails])
        with pytest.raises(EvidenceError, match=re.escape(str(db_path))):
            s.start()
        db = sqlite3.connect(db_path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == current
        columns = [row[1] for row in db.execute("PRAGMA table_info(flagged_flow)")]
        assert "note" not in columns
        db.close()

    def test_newer_version_refused(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """A store from a newer douane is refused, untouched, with both versions in the message."""
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        s.start()
        s.stop()
        db = sqlite3.connect(db_path)
        db.execute("PRAGMA user_version = 7")
        db.close()
        with pytest.raises(EvidenceError, match=r"newer douane \(schema version 7; this one knows up to 2\)"):
            s.start()
        db = sqlite3.connect(db_path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == 7
        db.close()

    def test_version_1_store_gains_sampling_interval(
        self, db_path: Path, pseudo: Pseudonymiser, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A store of schema 1 (before issue 7) keeps its flows, read back as exact counts."""
        with monkeypatch.context() as patch:
            patch.setattr(evidence, "MIGRATIONS", evidence.MIGRATIONS[:1])
            old = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
            old.start()
            assert old._db is not None
            old._db.execute(
                "INSERT INTO flagged_flow (start_ms, end_ms, recorded_ms, verdict, bytes_out) "
                "VALUES (?, ?, ?, 'critical', 4210)", (DAY_BEFORE_MS, DAY_BEFORE_MS, 0))
            old.stop()
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        s.start()
        s.record(flow(sampling_interval=100, bytes_out=421000))
        rows = s.query(EPOCH)
        s.stop()
        assert [(r["bytes_out"], r["sampling_interval"]) for r in rows] == [(4210, None), (421000, 100)]

    def test_foreign_database_refused(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """An SQLite file of another program is not taken over."""
        db_path.parent.mkdir(parents=True)
        db = sqlite3.connect(db_path)
        db.execute("CREATE TABLE patients (nir TEXT)")
        db.close()
        with pytest.raises(EvidenceError, match="not a douane evidence store"):
            EvidenceStore(EvidenceConfig(path=db_path), pseudo).start()


class TestDamagedStore:
    def test_not_sqlite(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """A file that is not SQLite is refused, named, and left as it was."""
        db_path.parent.mkdir(parents=True)
        db_path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(EvidenceError, match=re.escape(str(db_path)) + ".*not an SQLite database"):
            EvidenceStore(EvidenceConfig(path=db_path), pseudo).start()
        assert db_path.read_bytes() == b"this is not a database" * 100

    @pytest.mark.parametrize("check", [True, False])
    def test_damaged_pages(self, db_path: Path, pseudo: Pseudonymiser, check: bool) -> None:
        """A store whose pages were overwritten is refused at start with the file's name, checked or not."""
        s = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        s.start()
        for i in range(300):
            s.record(flow(bytes_out=i))
        s.stop()  # checkpoints: the records are in the main file
        data = bytearray(db_path.read_bytes())
        page = 4096
        assert len(data) > 6 * page
        for offset in range(2 * page, len(data) - page, page):  # every page but the header page
            data[offset : offset + 64] = b"\xa5" * 64
        db_path.write_bytes(bytes(data))
        message = "damaged" if check else "malformed"
        with pytest.raises(EvidenceError, match=re.escape(str(db_path)) + ".*" + message):
            EvidenceStore(EvidenceConfig(path=db_path, check_on_start=check), pseudo).start()

    def test_unreadable(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """A path that cannot be read as a file gives an EvidenceError naming it."""
        db_path.mkdir(parents=True)
        with pytest.raises(EvidenceError, match=re.escape(str(db_path))):
            EvidenceStore(EvidenceConfig(path=db_path), pseudo).start()

    def test_read_only(self, store: EvidenceStore, db_path: Path, pseudo: Pseudonymiser) -> None:
        """A read-only store (for reports) reads what the daemon writes and refuses to write."""
        store.record(flow())
        reader = EvidenceStore(EvidenceConfig(path=db_path, read_only=True), pseudo)
        reader.start()
        store.record(flow())
        assert len(reader.query(EPOCH)) == 2
        with pytest.raises(EvidenceError, match="read-only"):
            reader.record(flow())
        reader.stop()

    def test_read_only_odd_path(self, tmp_path: Path, pseudo: Pseudonymiser) -> None:
        """A path with URI characters (?, #, %, space) opens read-only as itself."""
        path = tmp_path / "odd ?#% dir" / "e.sqlite"
        writer = EvidenceStore(EvidenceConfig(path=path), pseudo)
        writer.start()
        writer.record(flow())
        reader = EvidenceStore(EvidenceConfig(path=path, read_only=True), pseudo)
        reader.start()
        assert len(reader.query(EPOCH)) == 1
        reader.stop()
        writer.stop()

    def test_read_only_missing(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """A report on a store that does not exist fails with the path, creating nothing."""
        with pytest.raises(EvidenceError, match=re.escape(str(db_path))):
            EvidenceStore(EvidenceConfig(path=db_path, read_only=True), pseudo).start()
        assert not db_path.parent.exists()


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from douane.daemon.evidence import EvidenceConfig, EvidenceStore
    from douane.daemon.pseudonym import Pseudonymiser

    path, synchronous, first = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = EvidenceStore(EvidenceConfig(path=path, synchronous=synchronous),
                          Pseudonymiser.from_state_dir(path.parent))
    store.start()
    print("started", flush=True)
    i = first
    while True:
        store.record({"start": "2026-11-28T10:00:00.000Z", "end": "2026-11-28T10:00:01.000Z",
                      "src": "10.0.0.1", "dst": "198.51.100.7", "direction": "outbound",
                      "bytes_out": i, "provider": "microsoft", "verdict": "critical",
                      "data_categories": {"health": ["zone:pacs"]}})
        print(i, flush=True)  # only after record() returned: committed
        i += 1
    """
)


class TestDurability:
    @pytest.mark.parametrize("synchronous", ["full", "normal"])
    def test_kill_9_loses_no_committed_record(self, tmp_path: Path, synchronous: str) -> None:
        """kill -9 of a writer mid-stream, three times: every reported record is there, the file is sound."""
        path = tmp_path / "evidence.sqlite"
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        reported: list[int] = []
        first = 1
        # Kill points that no batch size of 2, 5, 10, 50... would hide: a store that only committed
        # every N records would lose reported ones here.
        for target in (173, 219, 251):
            proc = subprocess.Popen(
                [sys.executable, str(script), str(path), synchronous, str(first)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started"
            seen = 0
            deadline = time.monotonic() + 60
            while seen < target and time.monotonic() < deadline:
                line = proc.stdout.readline()
                assert line, "the writer died on its own"
                reported.append(int(line))
                seen += 1
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer is inside its loop
            reported.extend(int(line) for line in proc.stdout.read().split())
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            assert Path(str(path) + "-wal").exists()  # killed with a live WAL, not closed
            first = reported[-1] + 1000
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {row[0] for row in db.execute("SELECT bytes_out FROM flagged_flow")}
        db.close()
        assert seen == 251
        assert set(reported) <= stored
        # And the daemon starts again on it.
        store = EvidenceStore(EvidenceConfig(path=path), Pseudonymiser.from_state_dir(tmp_path))
        store.start()
        assert len(store.query(EPOCH)) == len(stored)
        store.stop()


class TestPrivacy:
    def smuggling_records(self) -> list[dict[str, Any]]:
        """Records as a buggy stage could make them: identifier values and payload out of place."""
        return [
            flow(nir=NIR, payload=PAYLOAD.encode(), patient=PATIENT, identifier_value=NIR_SPACED),
            flow(data_categories={"health": ["zone:pacs", f"identifier:nir:{NIR}"]}),
            flow(data_categories={"health": [f"identifier:nir={NIR_SPACED}", f"nir-{NIR_DASHED}"]}),
            flow(data_categories={NIR: ["zone:pacs"], PAYLOAD: ["x"]}),
            flow(data_categories={"health": [PAYLOAD, PATIENT.replace("^", "-"), "x" * 65]}),
            flow(rule=f"nir-{NIR}", provider=NIR, service=PAYLOAD, zone=NIR_DASHED),
            flow(as_name=f"{PATIENT} {NIR}", hostname=f"{NIR}.exfil.example"),
            flow(exposure=[NIR, "us-cloud-act"], jurisdiction=NIR_SPACED),
            flow(exception={"rule": NIR, "justification": f"patient {NIR_SPACED}", "expires": NIR}),
            flow(exception=PAYLOAD),
            flow(src=NIR, dst=PAYLOAD),
            flow(verdict=NIR),
            flow(start=NIR, end=PAYLOAD),
            flow(location_country=NIR[:2] + NIR, asn=int(NIR) * 10**9, bytes_out=NIR),
        ]

    def test_nothing_smuggled_into_store_or_logs(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """Identifier values and payload in any field are never stored or logged; the flows still are."""
        store = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        sink = evidence_log_sink(pseudo)
        records = self.smuggling_records()
        with structlog.testing.capture_logs() as logs:
            store.start()
            for rec in records:
                store.record(rec)
                sink(rec)
        rows = store.query(EPOCH)
        assert len(rows) == len(records)
        assert all(row["refused"] for row in rows[1:])  # the first only had unknown keys
        raw = files_bytes(db_path)
        assert raw  # the scan is not vacuous
        for secret in (*SECRETS, INSIDE):
            assert secret.encode() not in raw, secret
            assert secret.encode("utf-16-le") not in raw, secret
        shown = repr(logs) + json.dumps(rows)
        for secret in (*SECRETS, INSIDE):
            assert secret not in shown, secret
        store.stop()
        # After the checkpoint the WAL's content is in the main file: scan again.
        raw = files_bytes(db_path)
        for secret in SECRETS:
            assert secret.encode() not in raw, secret

    def test_clean_record_is_found_by_the_scan(self, db_path: Path, pseudo: Pseudonymiser) -> None:
        """The byte scan works: a value that is stored is found in the files."""
        store = EvidenceStore(EvidenceConfig(path=db_path), pseudo)
        store.start()
        store.record(flow(hostname="marker-host.example"))
        assert b"marker-host.example" in files_bytes(db_path)
        store.stop()

    def test_clear_addresses_only_when_configured(self, db_path: Path) -> None:
        """The internal address is in the files only when pseudonyms are disabled."""
        for enabled in (True, False):
            store = EvidenceStore(EvidenceConfig(path=db_path), Pseudonymiser(SECRET, enabled))
            store.start()
            store.record(flow())
            store.stop()
            assert (INSIDE.encode() in files_bytes(db_path)) is not enabled


class TestEvidenceLogSink:
    @pytest.mark.parametrize(
        ("verdict", "level"), [("critical", "warning"), ("warning", "warning"), ("notice", "info")]
    )
    def test_levels(self, pseudo: Pseudonymiser, verdict: str, level: str) -> None:
        """One `flagged_flow` event per flagged flow: warning for warning/critical, info for notice."""
        sink = evidence_log_sink(pseudo)
        with structlog.testing.capture_logs() as logs:
            sink(flow(verdict=verdict))
        [entry] = logs
        assert (entry["event"], entry["log_level"], entry["verdict"]) == ("flagged_flow", level, verdict)

    def test_not_flagged_not_logged(self, pseudo: Pseudonymiser) -> None:
        """Allowed flows and flows without a verdict log nothing."""
        sink = evidence_log_sink(pseudo)
        with structlog.testing.capture_logs() as logs:
            sink(flow(verdict="allowed"))
            sink(flow(verdict=None))
        assert logs == []

    def test_same_fields_as_store(self, store: EvidenceStore, pseudo: Pseudonymiser) -> None:
        """The log line carries the stored fields (pseudonymised), nothing more."""
        sink = evidence_log_sink(pseudo)
        with structlog.testing.capture_logs() as logs:
            sink(flow())
        store.record(flow())
        [entry] = logs
        [row] = store.query(EPOCH)
        del row["id"], entry["event"], entry["log_level"]
        assert entry == row
        assert entry["src"] == pseudo.address(INSIDE)

    def test_json_serialisable(self, pseudo: Pseudonymiser) -> None:
        """The event renders as one JSON line (the production renderer)."""
        out: list[str] = []
        log = structlog.wrap_logger(
            structlog.PrintLogger(file=_Lines(out)),
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        )
        evidence_log_sink(pseudo, log)(flow())
        [line] = [line for line in out if line.strip()]
        data = json.loads(line)
        assert data["event"] == "flagged_flow"
        assert data["data_categories"] == {"health": ["zone:pacs", "protocol:dicom", "identifier:nir"]}


class _Lines:
    """A file-like object collecting written text."""

    def __init__(self, out: list[str]) -> None:
        self.out = out

    def write(self, text: str) -> int:
        self.out.append(text)
        return len(text)

    def flush(self) -> None:
        pass
