"""Autonomous system of an address (douane's compiled ASN table, or a pyasn IPASN text file) and its
name (pyasn AS-names JSON)."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton

from douane.geo import asn_table
from douane.geo.asn_table import MAX_ASN as _MAX_ASN
from douane.geo.asn_table import AsnTable
from douane.geo.files import DatabaseError, read_database

# ASCII digits only: str.isdigit() accepts "²", which int() refuses.
_ASN_KEY = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class AsnDatabase:
    """An opened ASN database: the compiled table of address ranges (see geo/asn_table.py)."""

    table: AsnTable
    prefixes: int
    source: str

    @classmethod
    def open(cls, path: Path) -> AsnDatabase:
        """Load a compiled ASN table, or a pyasn IPASN text file (plain, gzip or xz).

        The format is recognised by the table's magic bytes. A compiled table loads in a few
        hundredths of a second; an IPASN text file is parsed and compiled here (about two seconds
        for a full table: for a configured text file or a state directory written by an older
        douane; `douane update-db` stores the compiled form).

        Raises:
            DatabaseError: the file cannot be read, is neither format, is corrupt or holds no prefix.
        """
        data = read_database(path)
        if asn_table.is_table(data):
            table = asn_table.from_bytes(data)
        else:
            table = asn_table.from_ipasn_lines(_ipasn_text(data).split("\n"), _original_source(data))
        return cls(table=table, prefixes=table.prefixes, source=table.source)

    def lookup(self, address: IPv4Address | IPv6Address | str) -> int | None:
        """Return the AS number announcing `address`, None when no prefix covers it.

        `address` is an address object or a text: as inet_ntop writes it (the fast path), or
        anything else `ipaddress.ip_address` reads.

        Raises:
            ValueError: `address` is a text that is not an IP address.
        """
        if isinstance(address, str):
            try:
                packed = inet_pton(AF_INET6 if ":" in address else AF_INET, address)
            except (OSError, ValueError):
                packed = ipaddress.ip_address(address).packed
        else:
            packed = address.packed
        return self.table.lookup(packed) or None


def _ipasn_text(data: bytes) -> str:
    """The text of an IPASN file, refused early when it cannot be one."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as error:
        raise DatabaseError(f"not a pyasn IPASN text file (byte {error.start} is not ASCII)") from None
    if not text.strip():
        raise DatabaseError("is empty")
    if "\0" in text:
        raise DatabaseError("not a pyasn IPASN text file (it contains NUL bytes)")
    return text


def _original_source(data: bytes) -> str:
    # pyasn_util_convert (and our build_data.py) write "; Original source: ..." in the header.
    for line in data[:2048].decode("ascii", "replace").splitlines():
        if not line.startswith(";"):
            break
        key, _, value = line[1:].partition(":")
        if key.strip().lower() == "original source" and value.strip():
            return value.strip()[:200]
    return "pyasn IPASN file"


def _read_names_json(path: Path) -> dict[str, object]:
    data = read_database(path)
    try:
        names = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatabaseError(f"not valid JSON ({error})") from None
    except RecursionError:
        raise DatabaseError("not valid JSON (nested too deeply)") from None
    if not isinstance(names, dict):
        raise DatabaseError(f"expected a JSON object of AS number to name, got {type(names).__name__}")
    return names


def _valid_entry(key: str, value: object) -> bool:
    return isinstance(value, str) and _ASN_KEY.fullmatch(key) is not None and 0 < int(key) <= _MAX_ASN


def _clean_name(value: str) -> str:
    # Names come from registries: keep them printable and bounded for logs and labels.
    clean = value if value.isprintable() else "".join(c for c in value if c.isprintable())
    return clean[:200]


def load_as_names(path: Path) -> dict[int, str]:
    """Load a pyasn AS-names JSON object ``{"15169": "Google LLC", ...}`` (plain, gzip or xz).

    Entries whose key is not an AS number or whose value is not a string are dropped rather than
    failing the whole file: a name is a label, and one bad entry should not hide the others.
    Every entry is checked here; `AsNames.open` gives the same names checked one at a time.

    Raises:
        DatabaseError: the file cannot be read, is not JSON or is not an object, or no entry maps
            an AS number to a name.
    """
    return _validated(_read_names_json(path))


def _validated(names: dict[str, object]) -> dict[int, str]:
    result = {
        int(key): _clean_name(value)
        for key, value in names.items()
        if isinstance(value, str) and _valid_entry(key, value)
    }
    if names and not result:
        raise DatabaseError("no entry maps an AS number to a name")
    return result


# A key with leading zeros ("015169") names an AS that str(asn) does not find.
_ZERO_PADDED_KEY = re.compile(r"^0[0-9]{0,9}$", re.MULTILINE)


class AsNames:
    """AS number -> name from a pyasn AS-names file, each entry checked when first asked for.

    Checking the 91,000 entries of the embedded file at start-up took 0.1 s, and a run asks for
    a few hundred. `get` answers what `load_as_names`'s dictionary would, entry for entry.
    """

    __slots__ = ("_checked", "_complete", "_raw")

    def __init__(self, raw: dict[str, object] | None = None) -> None:
        self._raw = raw if raw is not None else {}
        self._checked: dict[int, str | None] = {}
        self._complete: dict[int, str] | None = None

    @classmethod
    def open(cls, path: Path) -> AsNames:
        """Read the file; entries are checked later, one at a time.

        Raises:
            DatabaseError: the file cannot be read, is not JSON or is not an object, or no entry
                maps an AS number to a name.
        """
        raw = _read_names_json(path)
        names = cls(raw)
        if _ZERO_PADDED_KEY.search("\n".join(raw)):
            # Rare enough to pay for the full check: then several keys may name one AS, and
            # the last of them wins as in load_as_names.
            names._complete = _validated(raw)
        # Stops at the first valid entry: the first one, in any file worth using.
        elif raw and not any(_valid_entry(key, value) for key, value in raw.items()):
            raise DatabaseError("no entry maps an AS number to a name")
        return names

    def get(self, asn: int) -> str | None:
        """The name of `asn`, None when the file has no valid entry for it."""
        if self._complete is not None:
            return self._complete.get(asn)
        try:
            return self._checked[asn]
        except KeyError:
            pass
        name = None
        if type(asn) is int and 0 < asn <= _MAX_ASN:
            value = self._raw.get(str(asn))
            if isinstance(value, str):
                name = _clean_name(value)
        # Misses are kept too: they are bounded by the ASes the table holds.
        self._checked[asn] = name
        return name
