"""The compiled ASN table: sorted address ranges and their AS, built once from prefixes.

A longest-prefix match over nested CIDR prefixes is the same as a look-up in the disjoint ranges
they cut the address space into, each range carrying the AS of its most specific prefix. Those
ranges fit in a few flat arrays: a look-up is one binary search (`bisect`, in C), loading is
`array.frombytes`, and the whole table takes about 10 MiB where pyasn's radix tree took 110.

The file format (little-endian)::

    magic    b"DOUANE-ASN\\x00\\x01"   format name and version 1
    u32      IPv4 ranges (n4)
    u32      IPv6 ranges (n6)
    u64      prefixes in the source data (reported, not used by look-ups)
    u32      length of the source text, then that many bytes of UTF-8
    u32[n4]  IPv4 range starts, strictly increasing
    u32[n4]  their AS (0: no AS)
    u64[n6]  IPv6 range starts, high 64 bits  } the pairs (high, low) strictly increasing
    u64[n6]  IPv6 range starts, low 64 bits   }
    u32[n6]  their AS (0: no AS)

A range runs from its start to the next start (or the end of the family's space); addresses before
the first start have no AS.
"""

from __future__ import annotations

import operator
import socket
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from douane.geo.files import DatabaseError

MAGIC = b"DOUANE-ASN\x00\x01"
_HEADER = struct.Struct(f"<{len(MAGIC)}sIIQI")
MAX_ASN = 2**32 - 1  # 32-bit AS numbers (RFC 6793)
MAX_SOURCE_BYTES = 1024
# The format depends on item sizes: "I" (C unsigned int) is 4 bytes wherever CPython runs, "L"
# would be on a 32-bit platform; "Q" (unsigned long long) is 8 bytes by the C standard's minimum.
_U32 = next(code for code in "IL" if array(code).itemsize == 4)
_U64 = "Q"
_LOW_MASK = (1 << 64) - 1
_BIG_ENDIAN = sys.byteorder == "big"
_HALVES = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class AsnTable:
    """Disjoint address ranges (by start) and the AS of each, per address family.

    Attributes:
        v4_starts, v4_asns: IPv4 range starts (strictly increasing) and their AS.
        v6_high, v6_low, v6_asns: IPv6 range starts split into high and low 64 bits (the pairs
            strictly increasing) and their AS. Split because arrays hold 64 bits at most, and
            prefixes longer than /64 exist (about 1,500 in a full table).
        prefixes: how many prefixes the source data held.
        source: where the data comes from, as the source file said.
    """

    v4_starts: array[int]
    v4_asns: array[int]
    v6_high: array[int]
    v6_low: array[int]
    v6_asns: array[int]
    prefixes: int
    source: str

    def lookup(self, packed: bytes) -> int:
        """The AS of a packed address (4 bytes IPv4, 16 IPv6), 0 for none."""
        if len(packed) == 4:
            end = bisect_right(self.v4_starts, int.from_bytes(packed, "big"))
            return self.v4_asns[end - 1] if end else 0
        high, low = _HALVES.unpack(packed)
        v6_high = self.v6_high
        end = bisect_right(v6_high, high)
        # Starts sharing the address's high half (rare: only prefixes longer than /64 make
        # them) are told apart by their low half; otherwise the high half decides alone.
        if end and v6_high[end - 1] == high:
            end = bisect_right(self.v6_low, low, bisect_left(v6_high, high, 0, end), end)
        return self.v6_asns[end - 1] if end else 0

    def to_bytes(self) -> bytes:
        """The table in the file format above (uncompressed)."""
        source = self.source.encode("utf-8")[:MAX_SOURCE_BYTES]
        header = _HEADER.pack(MAGIC, len(self.v4_starts), len(self.v6_high), self.prefixes, len(source))
        parts = [header, source]
        for values in (self.v4_starts, self.v4_asns, self.v6_high, self.v6_low, self.v6_asns):
            if _BIG_ENDIAN:
                swapped = array(values.typecode, values)
                swapped.byteswap()
                parts.append(swapped.tobytes())
            else:
                parts.append(values.tobytes())
        return b"".join(parts)


def is_table(data: bytes) -> bool:
    """True when `data` starts like a compiled table (of any version)."""
    return data.startswith(MAGIC[:-1])


def _array(typecode: str, data: memoryview) -> array[int]:
    values = array(typecode)
    values.frombytes(data)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def from_bytes(data: bytes) -> AsnTable:
    """Read a compiled table, checking everything a look-up relies on (the file is untrusted).

    Raises:
        DatabaseError: wrong magic or version, sizes that do not add up, starts not in strictly
            increasing order, or no range at all.
    """
    if not is_table(data):
        raise DatabaseError("not a douane ASN table (bad magic)")
    if len(data) < _HEADER.size:
        raise DatabaseError(f"truncated douane ASN table ({len(data)} bytes, header is {_HEADER.size})")
    magic, n4, n6, prefixes, source_size = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DatabaseError(f"douane ASN table version {magic[-1]} is not supported (expected {MAGIC[-1]})")
    if source_size > MAX_SOURCE_BYTES:
        raise DatabaseError(
            f"douane ASN table source text of {source_size} bytes (at most {MAX_SOURCE_BYTES})"
        )
    expected = _HEADER.size + source_size + n4 * 8 + n6 * 20
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "trailing bytes after the"
        raise DatabaseError(f"{state} douane ASN table ({len(data)} bytes, expected {expected})")
    if n4 + n6 == 0 or prefixes == 0:
        raise DatabaseError("holds no prefix (empty table)")
    view = memoryview(data)
    offset = _HEADER.size + source_size
    try:
        source = bytes(view[_HEADER.size : offset]).decode("utf-8")
    except UnicodeDecodeError:
        raise DatabaseError("douane ASN table source text is not UTF-8") from None
    arrays = []
    for typecode, count in ((_U32, n4), (_U32, n4), (_U64, n6), (_U64, n6), (_U32, n6)):
        size = count * (4 if typecode == _U32 else 8)
        arrays.append(_array(typecode, view[offset : offset + size]))
        offset += size
    v4_starts, v4_asns, v6_high, v6_low, v6_asns = arrays
    # u32 arrays cannot hold an AS above 2**32 - 1: only the order needs checking. map() over
    # operator functions keeps the check in C (about 10 ms for a full table).
    if any(map(operator.ge, v4_starts, v4_starts[1:])):
        raise DatabaseError("douane ASN table IPv4 range starts are not strictly increasing")
    if any(map(operator.gt, v6_high, v6_high[1:])) or any(
        map(operator.and_, map(operator.eq, v6_high, v6_high[1:]), map(operator.ge, v6_low, v6_low[1:]))
    ):
        raise DatabaseError("douane ASN table IPv6 range starts are not strictly increasing")
    clean = source if source.isprintable() else "".join(c for c in source if c.isprintable())
    return AsnTable(v4_starts, v4_asns, v6_high, v6_low, v6_asns, prefixes, clean[:200] or "douane ASN table")


# -- building a table from prefixes ---------------------------------------------------------------


def _flatten(prefixes: dict[tuple[int, int], int], bits: int) -> tuple[list[int], list[int]]:
    """Cut nested prefixes ((start, length) -> AS) into disjoint ranges with the innermost AS.

    A sweep in address order with a stack of the prefixes that enclose the current position:
    a prefix opens a range with its AS; when it ends, the range goes back to the AS of the
    prefix around it (or to no AS). Neighbouring ranges of one AS are merged.
    """
    top = 1 << bits
    starts: list[int] = []
    asns: list[int] = []

    def emit(position: int, asn: int) -> None:
        if position >= top:
            return
        if starts and starts[-1] == position:
            # Two events at one position (a prefix ending where the next begins, or nested
            # prefixes sharing a start): the later one is the more specific and wins.
            asns[-1] = asn
            if (asns[-2] if len(asns) > 1 else 0) == asn:
                starts.pop()
                asns.pop()
        elif (asns[-1] if asns else 0) != asn:
            starts.append(position)
            asns.append(asn)

    stack: list[tuple[int, int]] = []  # (end, AS) of the prefixes around the position

    def close_until(position: int) -> None:
        while stack and stack[-1][0] <= position:
            end, _ = stack.pop()
            emit(end, stack[-1][1] if stack else 0)

    # Sorted by start, then by length: an enclosing prefix comes before those inside it.
    for (start, length), asn in sorted(prefixes.items()):
        close_until(start)
        emit(start, asn)
        stack.append((start + (1 << (bits - length)), asn))
    close_until(top)
    return starts, asns


def build(
    v4: dict[tuple[int, int], int], v6: dict[tuple[int, int], int], prefixes: int, source: str
) -> AsnTable:
    """The table of IPv4 and IPv6 prefixes, each given as (network as an integer, length) -> AS.

    Args:
        v4, v6: the prefixes; host bits must be clear, AS numbers within 0..2**32 - 1.
        prefixes: how many prefixes the source held (duplicates included), for reports.
        source: where the data comes from.
    """
    starts4, asns4 = _flatten(v4, 32)
    starts6, asns6 = _flatten(v6, 128)
    return AsnTable(
        v4_starts=array(_U32, starts4),
        v4_asns=array(_U32, asns4),
        v6_high=array(_U64, [start >> 64 for start in starts6]),
        v6_low=array(_U64, [start & _LOW_MASK for start in starts6]),
        v6_asns=array(_U32, asns6),
        prefixes=prefixes,
        source=source,
    )


def from_ipasn_lines(lines: Iterable[str], source: str) -> AsnTable:
    """Parse pyasn IPASN lines (``network/length<TAB>asn``; ``;`` and ``#`` comments) into a table.

    As in pyasn, host bits set in a network are ignored and a prefix given twice keeps its last
    AS. Stricter than pyasn's C reader, which takes ``15169abc`` as 15169 and ``-5`` as
    4294967291: the length and the AS must be plain decimal numbers.

    Raises:
        DatabaseError: a line that is not a prefix and an AS (the message names the line), or no
            prefix at all.
    """
    families: dict[int, dict[tuple[int, int], int]] = {32: {}, 128: {}}
    records = 0
    for number, line in enumerate(lines, start=1):
        if not line or line[0] in ";#":
            continue
        try:
            bits, start, length, asn = _parse_line(line)
        except ValueError as error:
            raise DatabaseError(f"not a valid pyasn IPASN file (line {number}: {error})") from None
        families[bits][start, length] = asn
        records += 1
    if records == 0:
        raise DatabaseError("holds no prefix (empty or comments only)")
    return build(families[32], families[128], records, source)


def _parse_line(line: str) -> tuple[int, int, int, int]:
    """(address bits, network, length, AS) of one IPASN line. Raises ValueError."""
    network, tab, asn_text = line.partition("\t")
    address, slash, length_text = network.partition("/")
    if not tab or not slash:
        raise ValueError("expected network/length, a tab and an AS number")
    asn_text = asn_text.strip()
    if not (asn_text.isascii() and asn_text.isdigit() and length_text.isascii() and length_text.isdigit()):
        raise ValueError("the prefix length and the AS must be decimal numbers")
    bits, family = (128, socket.AF_INET6) if ":" in address else (32, socket.AF_INET)
    try:
        packed = socket.inet_pton(family, address)
    except (OSError, ValueError):
        raise ValueError("not an IP address before the /") from None
    length, asn = int(length_text), int(asn_text)
    # pyasn refuses /0 and AS 0 too: a default route says nothing about who holds an address.
    if not 0 < length <= bits:
        raise ValueError(f"prefix length {length} out of 1..{bits}")
    if not 0 < asn <= MAX_ASN:
        raise ValueError(f"AS {asn} out of 1..{MAX_ASN}")
    host_bits = bits - length
    return bits, int.from_bytes(packed, "big") >> host_bits << host_bits, length, asn
