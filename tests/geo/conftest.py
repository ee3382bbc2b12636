"""Fixtures for douane.geo: a minimal MaxMind DB writer and small database files.

The writer follows the MaxMind DB format specification, version 2.0
(https://maxmind.github.io/MaxMind-DB/): a binary search tree of 24-bit records, a 16-byte
separator, a data section, then the metadata after the marker ``\\xab\\xcd\\xefMaxMind.com``.
Written here so the tests need no writer package and can produce deliberately broken files.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from douane.geo import GeoConfig, GeoDatabases

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"

# Data section type numbers (spec, "Output Data Section"); above 7 they are "extended" types.
_UTF8, _MAP, _UINT16, _UINT32, _UINT64, _ARRAY = 2, 7, 5, 6, 9, 11


class U16(int):
    """An integer to encode as uint16 (metadata fields have fixed types)."""


class U64(int):
    """An integer to encode as uint64."""


def _control(type_number: int, size: int) -> bytes:
    # Control byte: 3 type bits then 5 size bits; extended types put (type - 7) in the next byte;
    # sizes of 29 or more continue in 1, 2 or 3 following bytes.
    first = (type_number << 5) if type_number <= 7 else 0
    extended = b"" if type_number <= 7 else bytes([type_number - 7])
    if size < 29:
        return bytes([first | size]) + extended
    if size < 29 + 256:
        return bytes([first | 29]) + extended + bytes([size - 29])
    if size < 285 + 65536:
        return bytes([first | 30]) + extended + (size - 285).to_bytes(2, "big")
    return bytes([first | 31]) + extended + (size - 65821).to_bytes(3, "big")


def encode(value: Any) -> bytes:
    """Encode a value in the MaxMind DB data format (maps, arrays, strings, unsigned ints)."""
    if isinstance(value, dict):
        body = b"".join(encode(str(key)) + encode(item) for key, item in value.items())
        return _control(_MAP, len(value)) + body
    if isinstance(value, list):
        return _control(_ARRAY, len(value)) + b"".join(encode(item) for item in value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _control(_UTF8, len(raw)) + raw
    if isinstance(value, int):
        kind = _UINT16 if isinstance(value, U16) else _UINT64 if isinstance(value, U64) else _UINT32
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return _control(kind, len(raw)) + raw
    raise TypeError(f"cannot encode {value!r}")


def mmdb_bytes(
    entries: dict[str, Any],
    *,
    ip_version: int = 6,
    database_type: str = "Test-Country",
    build_epoch: int = 1_700_000_000,
    raw_pointers: dict[str, int] | None = None,
) -> bytes:
    """Build a MaxMind DB mapping each network (CIDR text) to a record.

    IPv4 networks in an IPv6 tree are stored under ::/96, where readers look IPv4 addresses up.
    `raw_pointers` maps networks to a data offset written as is (to point outside the data).
    """
    data = bytearray()
    targets: list[tuple[str, int]] = []
    for cidr, record in entries.items():
        targets.append((cidr, len(data)))
        data += encode(record)
    targets += list((raw_pointers or {}).items())

    nodes: list[list[tuple[str, int] | None]] = [[None, None]]
    for target, offset in targets:
        network = ipaddress.ip_network(target)
        bits = int(network.network_address)
        length = network.prefixlen
        width = network.max_prefixlen
        if ip_version == 6 and network.version == 4:
            width, length = 128, length + 96
        node = 0
        for depth in range(length):
            bit = (bits >> (width - 1 - depth)) & 1 if depth >= width - network.max_prefixlen else 0
            if depth == length - 1:
                nodes[node][bit] = ("data", offset)
                break
            child = nodes[node][bit]
            if child is None:
                nodes.append([None, None])
                nodes[node][bit] = ("node", len(nodes) - 1)
                child = nodes[node][bit]
            assert child is not None and child[0] == "node", "overlapping test networks"
            node = child[1]

    count = len(nodes)

    def record_value(slot: tuple[str, int] | None) -> int:
        if slot is None:
            return count  # "no data" is the node count itself
        kind, value = slot
        return value if kind == "node" else count + 16 + value

    tree = b"".join(
        record_value(left).to_bytes(3, "big") + record_value(right).to_bytes(3, "big")
        for left, right in nodes
    )
    metadata = {
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(build_epoch),
        "database_type": database_type,
        "description": {"en": "douane test database"},
        "ip_version": U16(ip_version),
        "languages": ["en"],
        "node_count": count,
        "record_size": U16(24),
    }
    return tree + bytes(16) + bytes(data) + METADATA_MARKER + encode(metadata)


# A tiny pyasn IPASN file and AS-names file covering the addresses the tests use.
IPASN_TEXT = (
    "; IP-ASN32-DAT file\n; Original source: douane tests\n; \n"
    "8.8.8.0/24\t15169\n51.178.0.0/16\t16276\n2a01:4f8::/32\t24940\n"
)
AS_NAMES = {"15169": "Google LLC", "16276": "OVH SAS", "24940": "Hetzner Online GmbH"}


@pytest.fixture
def make_mmdb() -> Callable[..., bytes]:
    """The MaxMind DB writer above (fixtures avoid importing conftest from the tests)."""
    return mmdb_bytes


@pytest.fixture
def ipasn_text() -> str:
    """The small IPASN file's text."""
    return IPASN_TEXT


@pytest.fixture
def small_files(tmp_path: Path) -> dict[str, Any]:
    """Small valid country (country_code schema), ASN and AS-names files."""
    country = tmp_path / "country.mmdb"
    country.write_bytes(
        mmdb_bytes(
            {
                "8.8.8.0/24": {"country_code": "US"},
                "51.178.0.0/16": {"country_code": "FR"},
                "2a01:4f8::/32": {"country_code": "DE"},
            }
        )
    )
    asn = tmp_path / "ipasn.dat"
    asn.write_text(IPASN_TEXT, encoding="ascii")
    names = tmp_path / "asnames.json"
    names.write_text(json.dumps(AS_NAMES), encoding="utf-8")
    return {"country_db": country, "asn_db": asn, "as_names": names}


@pytest.fixture
def started() -> Iterator[Callable[..., GeoDatabases]]:
    """A factory of started GeoDatabases, stopped at the end of the test."""
    made: list[GeoDatabases] = []

    def make(**config: Any) -> GeoDatabases:
        databases = GeoDatabases(GeoConfig(**config))
        databases.start()
        made.append(databases)
        return databases

    yield make
    for databases in made:
        databases.stop()


@pytest.fixture(scope="session")
def embedded_geo() -> Iterator[GeoDatabases]:
    """The embedded databases, loaded once for the session (about a second)."""
    databases = GeoDatabases(GeoConfig())
    databases.start()
    yield databases
    databases.stop()
