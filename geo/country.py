"""Country of an address from a MaxMind DB file, in either of the two common schemas."""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import maxminddb

from douane.geo.files import DatabaseError, read_database

# ISO 3166-1 alpha-2 codes only. "EU" and "AP" are continent placeholders in old MaxMind data and
# "ZZ"/"XX" mean "unknown" in several databases: none of them is a place a server stands.
_ISO_CODE = re.compile(r"[A-Z]{2}")
_NOT_A_COUNTRY = frozenset({"EU", "AP", "ZZ", "XX"})
# Addresses announced by large, stable networks: looked up once at open time to find a corrupt
# tree or a database of the wrong kind (an ASN or city-only mmdb) before the first flow does.
_PROBES = (
    IPv4Address("8.8.8.8"),
    IPv4Address("1.1.1.1"),
    IPv4Address("51.178.0.1"),
    IPv4Address("193.51.224.1"),
    IPv6Address("2a01:4f8::1"),
    IPv6Address("2001:4860:4860::8888"),
)


def country_of(record: Any) -> str | None:
    """Return the ISO code of a record in the ip-location-db or the MaxMind/DB-IP schema.

    ip-location-db writes ``{"country_code": "FR"}``; MaxMind GeoLite2/GeoIP2 and DB-IP's own
    mmdb write ``{"country": {"iso_code": "FR", ...}}``. `registered_country` is deliberately
    ignored: it is where the block is registered, not where the server stands.
    """
    if not isinstance(record, dict):
        return None
    code = record.get("country_code")
    if code is None:
        country = record.get("country")
        code = country.get("iso_code") if isinstance(country, dict) else None
    if not isinstance(code, str):
        return None
    code = code.strip().upper()
    if not _ISO_CODE.fullmatch(code) or code in _NOT_A_COUNTRY:
        return None
    return code


@dataclass(frozen=True, slots=True)
class CountryDatabase:
    """An opened country database held in memory."""

    reader: maxminddb.Reader
    ipv6: bool
    build_time: datetime | None
    source: str

    @classmethod
    def open(cls, path: Path) -> CountryDatabase:
        """Load `path` (plain, gzip or xz MaxMind DB) and check that it answers.

        The decompressed data goes to a private temporary file that the C extension maps and
        that is unlinked at once: look-ups cost about 0.6 µs instead of 20 µs in pure Python,
        and no update job can rewrite the mapped file under us (an mmap of a file rewritten in
        place faults with SIGBUS and would kill the daemon). Without the extension, the
        pure-Python reader works on an in-memory copy.

        Raises:
            DatabaseError: the file cannot be read or is not a usable country database.
        """
        data = read_database(path)
        try:
            reader = _open_private_mmap(data)
        # The decoder parses untrusted bytes and raises whatever its parsing trips on
        # (InvalidDatabaseError, TypeError from unexpected metadata keys, IndexError, ...).
        except Exception as error:  # noqa: BLE001
            raise DatabaseError(f"not a valid MaxMind DB file ({_short(error)})") from None
        meta = reader.metadata()
        try:
            records = [reader.get(ip) for ip in _PROBES if meta.ip_version == 6 or ip.version == 4]
        except Exception as error:  # noqa: BLE001 - a corrupt tree or data section, as above
            reader.close()
            raise DatabaseError(f"corrupt MaxMind DB data ({_short(error)})") from None
        found = [record for record in records if record is not None]
        schema_keys = {"country_code", "country", "registered_country"}
        if found and not any(isinstance(r, dict) and schema_keys & r.keys() for r in found):
            reader.close()
            raise DatabaseError(
                f"records have neither country.iso_code nor country_code "
                f"(database type {meta.database_type!r}: is this a country database?)"
            )
        build_time = None
        if isinstance(meta.build_epoch, int) and 0 < meta.build_epoch < 2**33:
            build_time = datetime.fromtimestamp(meta.build_epoch, UTC)
        description = meta.description.get("en") if isinstance(meta.description, dict) else None
        source = f"{meta.database_type}" + (f": {description}" if description else "")
        return cls(reader=reader, ipv6=meta.ip_version == 6, build_time=build_time, source=source)

    def lookup(self, address: IPv4Address | IPv6Address | str) -> str | None:
        """Return the country code of `address` (an address, or its text as inet_ntop writes it),
        None when the database has no answer.

        Raises:
            Exception: whatever a corrupt data section makes the reader raise; the caller counts it.
        """
        ipv6 = ":" in address if isinstance(address, str) else address.version == 6
        if ipv6 and not self.ipv6:
            # An IPv4-only database (dbip-country-ipv4.mmdb) has no answer, which is not an error.
            return None
        return country_of(self.reader.get(address))

    def close(self) -> None:
        self.reader.close()


def _open_private_mmap(data: bytes) -> maxminddb.Reader:
    try:
        import maxminddb.extension  # noqa: PLC0415 — only to know whether it is there
    except ImportError:
        return maxminddb.open_database(io.BytesIO(data), maxminddb.MODE_FD)
    fd, name = tempfile.mkstemp(prefix="douane-country-", suffix=".mmdb")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return maxminddb.open_database(name, maxminddb.MODE_MMAP_EXT)
    finally:
        Path(name).unlink()


def _short(error: BaseException) -> str:
    # Reader messages embed the repr of our BytesIO; the caller names the real file instead.
    text = re.sub(r"\s*\(<_io\.BytesIO object at 0x[0-9a-f]+>\)", "", str(error))
    text = re.sub(r"\s*\(?\S*douane-country-\w+\.mmdb\)?", "", text)
    return f"{type(error).__name__}: {text}"[:200]
