"""Autonomous system of an address (pyasn IPASN file) and its name (pyasn AS-names JSON)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pyasn

from douane.geo.files import DatabaseError, read_database

# 32-bit AS numbers (RFC 6793). pyasn stores whatever the file says, modulo 2**32.
_MAX_ASN = 2**32 - 1
# ASCII digits only: str.isdigit() accepts "²", which int() refuses.
_ASN_KEY = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class AsnDatabase:
    """An opened IPASN database (pyasn's radix tree, in C)."""

    index: pyasn.pyasn
    prefixes: int
    source: str

    @classmethod
    def open(cls, path: Path) -> AsnDatabase:
        """Load a pyasn IPASN file (``prefix/len<TAB>asn`` lines; plain, gzip or xz).

        The file is decompressed here rather than by pyasn so that xz works too and a bad file
        gives a DatabaseError instead of whatever pyasn's reader raises.

        Raises:
            DatabaseError: the file cannot be read, is not an IPASN file or holds no prefix.
        """
        data = read_database(path)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as error:
            raise DatabaseError(f"not a pyasn IPASN text file (byte {error.start} is not ASCII)") from None
        if not text.strip():
            raise DatabaseError("is empty")
        if "\0" in text:
            raise DatabaseError("not a pyasn IPASN text file (it contains NUL bytes)")
        try:
            index = pyasn.pyasn(None, ipasn_string=text)
        # The C loader reports a bad line as RuntimeError (with its record number) or ValueError.
        except (RuntimeError, ValueError) as error:
            raise DatabaseError(f"not a valid pyasn IPASN file ({error})") from None
        # load_ipasndb's return value, kept by pyasn as `_records`; listing radix.prefixes() to
        # count them would cost 0.3 s on a full table.
        prefixes = getattr(index, "_records", None)
        if not isinstance(prefixes, int):
            prefixes = len(index.radix.prefixes())
        if prefixes == 0:
            raise DatabaseError("holds no prefix (empty or comments only)")
        return cls(index=index, prefixes=prefixes, source=_original_source(text))

    def lookup(self, address: IPv4Address | IPv6Address | str) -> int | None:
        """Return the AS number announcing `address` (an address, or its text as inet_ntop writes
        it), None when no prefix covers it."""
        # The radix parses text; an IPv6Address's own str() costs 7 µs, so text is passed as is.
        asn, _prefix = self.index.lookup(address if isinstance(address, str) else str(address))
        if not isinstance(asn, int) or not 0 < asn <= _MAX_ASN:
            return None
        return asn


def _original_source(text: str) -> str:
    # pyasn_util_convert (and our build_data.py) write "; Original source: ..." in the header.
    for line in text[:2048].splitlines():
        if not line.startswith(";"):
            break
        key, _, value = line[1:].partition(":")
        if key.strip().lower() == "original source" and value.strip():
            return value.strip()[:200]
    return "pyasn IPASN file"


def load_as_names(path: Path) -> dict[int, str]:
    """Load a pyasn AS-names JSON object ``{"15169": "Google LLC", ...}`` (plain, gzip or xz).

    Entries whose key is not an AS number or whose value is not a string are dropped rather than
    failing the whole file: a name is a label, and one bad entry should not hide the others.

    Raises:
        DatabaseError: the file cannot be read, is not JSON or is not an object.
    """
    data = read_database(path)
    try:
        names = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatabaseError(f"not valid JSON ({error})") from None
    except RecursionError:
        raise DatabaseError("not valid JSON (nested too deeply)") from None
    if not isinstance(names, dict):
        raise DatabaseError(f"expected a JSON object of AS number to name, got {type(names).__name__}")
    result: dict[int, str] = {}
    for key, value in names.items():
        if isinstance(value, str) and _ASN_KEY.fullmatch(key) and 0 < int(key) <= _MAX_ASN:
            # Names come from registries: keep them printable and bounded for logs and labels.
            clean = value if value.isprintable() else "".join(c for c in value if c.isprintable())
            result[int(key)] = clean[:200]
    if names and not result:
        raise DatabaseError("no entry maps an AS number to a name")
    return result
