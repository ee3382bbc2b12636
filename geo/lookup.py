"""Where an address goes: ASN, AS name, country and location zone, once per address."""

from __future__ import annotations

import functools
import ipaddress
import time
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import structlog

from douane.geo import embedded
from douane.geo.address_text import ntop_packed
from douane.geo.asn import AsNames, AsnDatabase
from douane.geo.country import CountryDatabase
from douane.geo.files import DatabaseError
from douane.geo.zones import UNKNOWN, Zone, Zones, ZonesError, default_zones

ATTRIBUTION = embedded.ATTRIBUTION
ANSWERS_KEPT = 65536  # distinct (AS, country) answers shared between addresses


@dataclass(frozen=True, slots=True)
class GeoConfig:
    """Where the geo databases are. None means the database embedded in the package.

    Attributes:
        country_db: a MaxMind DB file (plain, .gz or .xz) whose records hold either
            ``country.iso_code`` (MaxMind, DB-IP) or ``country_code`` (ip-location-db).
        asn_db: a compiled ASN table (as `douane update-db` stores it) or a pyasn IPASN text file
            (``prefix/len<TAB>asn`` lines, slower to load); plain, .gz or .xz.
        as_names: a pyasn AS-names JSON object (plain, .gz or .xz). None uses the embedded names,
            also with a custom `asn_db`: an AS keeps its name whichever table located it.
        cache_size: how many addresses keep their answer (least recently used evicted first);
            0 disables the cache.
    """

    country_db: Path | None = None
    asn_db: Path | None = None
    as_names: Path | None = None
    cache_size: int = 65536

    def __post_init__(self) -> None:
        if not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise ValueError(f"cache_size: expected an integer >= 0, got {self.cache_size!r}")


@dataclass(frozen=True, slots=True)
class GeoAnswer:
    """What the databases say about one address; None/`unknown` where they have no answer."""

    asn: int | None
    as_name: str | None
    location_country: str | None
    location_zone: Zone


UNKNOWN_ANSWER = GeoAnswer(asn=None, as_name=None, location_country=None, location_zone=UNKNOWN)

# Every block where `ipaddress` may call an address not global (its special-purpose lists, in any
# Python release douane runs on: they grew in 3.12 and 3.13) or multicast, coarsened to a few
# prefixes. An address outside them is global and not multicast whatever the release says, so its
# look-up needs no `ipaddress` object (parsing and `is_global` cost 6 to 10 µs, the look-up itself
# about 2); an address inside takes the exact path through `ipaddress`. A test checks that these
# blocks cover the running release's lists.
SPECIAL_BLOCKS: dict[int, tuple[str, ...]] = {
    4: (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3",
    ),
    6: (
        "::/8", "100::/8", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/16", "5f00::/16",
        "fc00::/6",
    ),
}


def _spans(blocks: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """First and last address (as integers) of each block, sorted and merged, for bisection."""
    starts: list[int] = []
    ends: list[int] = []
    for first, last in sorted(
        (int(net.network_address), int(net.broadcast_address))
        for net in map(ipaddress.ip_network, blocks)
    ):
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    return starts, ends


# By packed length: 4 bytes for IPv4, 16 for IPv6.
_SPECIAL_SPANS = {4: _spans(SPECIAL_BLOCKS[4]), 16: _spans(SPECIAL_BLOCKS[6])}


def plainly_global(address: object) -> bool:
    """True when `address` is the canonical text of an address outside every special block.

    Canonical means as `inet_ntop` writes it (douane's own records), so that `ipaddress` would
    read the same address from it: no scope id, no leading zeros, IPv6 compressed in lower case.
    """
    packed = ntop_packed(address)
    if packed is None:
        return False
    starts, ends = _SPECIAL_SPANS[len(packed)]
    value = int.from_bytes(packed, "big")
    block = bisect_right(starts, value) - 1
    return block < 0 or value > ends[block]


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """One database file as loaded: for `douane version`, `douane lookup` and the build metric.

    Attributes:
        name: "country", "asn" or "as_names".
        path: the file read (the embedded file's path when not configured).
        source: where the data comes from (package and version, or the file's own description).
        licence, attribution: for the embedded data; empty for a user's file (douane cannot know).
        build_time: when the data was built; None if the file does not say or was not loaded.
        error: why the file is not in use, None when it is.
        lookup_errors: look-ups that failed on corrupt data inside an opened file.
    """

    name: str
    path: str
    source: str
    licence: str
    attribution: str
    build_time: datetime | None
    error: str | None
    lookup_errors: int = 0


class GeoDatabases:
    """The country, ASN and AS-names databases, with a bounded per-address answer cache.

    Built with no I/O; `start()` loads the files and never raises: a missing or corrupt file is
    logged, recorded (see `problems()`), and its fields answer None/`unknown`.
    """

    def __init__(self, config: GeoConfig, logger: Any = None) -> None:
        self.config = config
        self._log = logger if logger is not None else structlog.get_logger("douane.geo")
        self._country: CountryDatabase | None = None
        self._asn: AsnDatabase | None = None
        self._names = AsNames()
        self._zones: Zones | None = None
        self._zones_error: str | None = None
        self._infos: dict[str, DatabaseInfo] = {}
        self._lookup_errors = {"country": 0, "asn": 0}
        # Answers are few (one per AS and country): each is built once and shared by the
        # addresses that have it. Bounded like the address cache; cleared when the data changes.
        self._answers: dict[tuple[int | None, str | None], GeoAnswer] = {}
        self.start_seconds: float | None = None
        # A cache per instance (not a decorated method, which would share one cache across
        # instances and keep them alive); built in C, ~0.1 µs per hit.
        self._cached = functools.lru_cache(maxsize=config.cache_size)(self._answer)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the databases; a file that cannot be used is logged and recorded, never raised."""
        began = time.perf_counter()
        built = embedded.provenance()
        self._country, self._infos["country"] = self._open(
            "country", self.config.country_db, embedded.COUNTRY_FILE, built, CountryDatabase.open
        )
        self._asn, self._infos["asn"] = self._open(
            "asn", self.config.asn_db, embedded.ASN_FILE, built, AsnDatabase.open
        )
        names, self._infos["as_names"] = self._open(
            "as_names", self.config.as_names, embedded.AS_NAMES_FILE, built, AsNames.open
        )
        self._names = names if names is not None else AsNames()
        try:
            self._zones, self._zones_error = default_zones(), None
        except ZonesError as failure:  # a packaging error, but still not a reason to stop
            self._zones, self._zones_error = None, str(failure)
            self._log.warning("geo_zones_unavailable", error=self._zones_error)
        self._cached.cache_clear()
        self._answers.clear()
        self.start_seconds = time.perf_counter() - began
        self._log.info(
            "geo_databases_started",
            seconds=round(self.start_seconds, 3),
            problems=len(self.problems()),
        )

    def stop(self) -> None:
        """Release the databases; later look-ups answer unknown."""
        if self._country is not None:
            self._country.close()
        self._country, self._asn, self._names = None, None, AsNames()
        self._cached.cache_clear()
        self._answers.clear()

    def _open(
        self,
        name: str,
        configured: Path | None,
        default: Path,
        built: dict[str, embedded.Provenance],
        opener: Any,
    ) -> tuple[Any, DatabaseInfo]:
        path = configured if configured is not None else default
        ours = built.get(default.name) if configured is None else None
        try:
            handle = opener(path)
            error = None
        except DatabaseError as failure:
            handle, error = None, str(failure)
        # Last resort: a third-party parser on an untrusted file must not stop the daemon.
        except Exception as failure:  # noqa: BLE001
            handle, error = None, f"cannot load it ({type(failure).__name__}: {failure})"[:300]
        if error is not None:
            self._log.warning("geo_database_unavailable", database=name, path=str(path), error=error)
        build_time = ours.build_time if ours else getattr(handle, "build_time", None)
        source = ours.source if ours else getattr(handle, "source", "user file")
        info = DatabaseInfo(
            name=name,
            path=str(path),
            source=source,
            licence=ours.licence if ours else "",
            attribution=ours.attribution if ours else "",
            build_time=build_time if error is None else None,
            error=error,
        )
        return handle, info

    # -- queries ------------------------------------------------------------------------------

    def lookup(self, address: str) -> GeoAnswer:
        """Return the answer for an address text; invalid text gives the all-unknown answer.

        Whatever `ipaddress.ip_address` accepts works (packed 4/16-byte addresses too); any other
        value gives the all-unknown answer. Cached per distinct `address` (bounded LRU). Never
        raises.
        """
        try:
            return self._cached(address)
        except TypeError:  # unhashable argument: the cache cannot even key it
            return UNKNOWN_ANSWER

    def _answer(self, address: str) -> GeoAnswer:
        if plainly_global(address):
            # The databases read the text as they would the object, without building one.
            return self._query(address)
        try:
            parsed = ipaddress.ip_address(address)
        except (ValueError, TypeError):
            return UNKNOWN_ANSWER
        if isinstance(parsed, IPv6Address):
            mapped = parsed.ipv4_mapped
            # ::ffff:a.b.c.d is an IPv4 peer on a dual-stack socket; the scope id (fe80::1%eth0)
            # is local information that neither database knows.
            parsed = mapped if mapped is not None else IPv6Address(int(parsed))
        if not parsed.is_global or parsed.is_multicast:
            # RFC 1918, loopback, link-local, ULA, CGNAT, documentation...: no AS, no country,
            # and asking a database would only risk a wrong answer from a stray entry.
            return UNKNOWN_ANSWER
        return self._query(parsed)

    def _query(self, address: IPv4Address | IPv6Address | str) -> GeoAnswer:
        country = asn = None
        if self._country is not None:
            try:
                country = self._country.lookup(address)
            except Exception as failure:  # noqa: BLE001 - corrupt data section; counted, not fatal
                self._lookup_failed("country", failure)
        if self._asn is not None:
            try:
                asn = self._asn.lookup(address)
            except Exception as failure:  # noqa: BLE001 - same containment for the ASN table
                self._lookup_failed("asn", failure)
        answer = self._answers.get((asn, country))
        if answer is None:
            answer = GeoAnswer(
                asn=asn,
                as_name=self._names.get(asn) if asn is not None else None,
                location_country=country,
                location_zone=self._zones.zone(country) if self._zones is not None else UNKNOWN,
            )
            if len(self._answers) >= ANSWERS_KEPT:
                self._answers.clear()
            self._answers[(asn, country)] = answer
        return answer

    def _lookup_failed(self, name: str, failure: Exception) -> None:
        self._lookup_errors[name] += 1
        # Logged on the first failure and then every 1000th, so a corrupt file cannot flood logs.
        if self._lookup_errors[name] % 1000 == 1:
            self._log.warning(
                "geo_lookup_failed",
                database=name,
                error=f"{type(failure).__name__}: {failure}"[:200],
                failures=self._lookup_errors[name],
            )

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses, maximum and current size of the answer cache."""
        return self._cached.cache_info()

    def databases(self) -> list[DatabaseInfo]:
        """Each database as loaded by the last `start()` (empty before it)."""
        return [
            DatabaseInfo(
                name=info.name,
                path=info.path,
                source=info.source,
                licence=info.licence,
                attribution=info.attribution,
                build_time=info.build_time,
                error=info.error,
                lookup_errors=self._lookup_errors.get(info.name, 0),
            )
            for info in self._infos.values()
        ]

    def problems(self) -> list[str]:
        """One message per unusable file, naming the database, the file and what is wrong."""
        found = [
            f"{info.name.replace('_', '-')} database {info.path}: {info.error}"
            for info in self._infos.values()
            if info.error is not None
        ]
        if self._zones_error is not None:
            found.append(f"zones table: {self._zones_error}")
        return found


def check_database_files(config: GeoConfig, logger: Any = None) -> list[str]:
    """Load the configured databases once and return their problems (for `douane check`).

    Costs one full load (about 0.2 s with the embedded data).
    """
    databases = GeoDatabases(config, logger=logger if logger is not None else _SILENT)
    databases.start()
    try:
        return databases.problems()
    finally:
        databases.stop()


class _Silent:
    """A logger that drops everything: `check` reports problems itself, once."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


_SILENT = _Silent()
