"""Streaming reader for pcap and pcapng files.

The reader never loads the whole file: it reads fixed-size chunks, so memory stays flat whatever the
capture's size. It accepts both pcap byte orders, micro- and nanosecond pcap, and pcapng with several
interfaces (each with its own link type and timestamp resolution). Anything the reader cannot make
sense of raises `CaptureFormatError`; a file cut in the middle of a record ends the iteration and sets
`truncated`, because a capture killed mid-write is normal and its complete records are still good.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# (timestamp in seconds, link type, captured bytes, original length on the wire)
Frame = tuple[float, int, bytes, int]
# A buffer and the frames in it: (timestamp, link type, start, end of the captured bytes, wire
# length). Readers hand out whole chunks so that no frame is copied on the per-packet path.
Record = tuple[float, int, int, int, int]
Batch = tuple[bytes, list[Record]]

CHUNK = 1 << 20
# A record larger than this is not a packet but a corrupt length field (pcapng's own readers use 16 MiB).
MAX_RECORD = 16 << 20

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


class CaptureFormatError(ValueError):
    """The file is not a capture this reader understands (bad magic, impossible header)."""


@dataclass
class CaptureFile:
    """An open capture: iterate it for frames, then read `truncated` and `format`."""

    path: Path
    format: str = ""
    truncated: bool = False
    # Blocks whose own lengths contradict each other (packet longer than its block, unknown interface).
    bad_records: int = 0
    bytes_read: int = 0
    size: int = 0

    def __iter__(self) -> Iterator[Frame]:
        """Frames one by one, each its own bytes (convenient; `batches` is the fast way)."""
        for buf, records in self.batches():
            for ts, linktype, start, end, wirelen in records:
                yield ts, linktype, buf[start:end], wirelen

    def batches(self) -> Iterator[Batch]:
        """The capture as buffers with the frames they hold; raises CaptureFormatError."""
        with self.path.open("rb") as fh:
            self.size = self.path.stat().st_size
            head = fh.read(4)
            if not head:
                raise CaptureFormatError(f"{self.path}: empty file, not a pcap or pcapng capture")
            if head in PCAP_MAGICS:
                self.format = "pcap"
                yield from self._pcap(fh, head)
            elif head == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(fh, head)
            else:
                raise CaptureFormatError(
                    f"{self.path}: not a pcap or pcapng capture (starts with 0x{head.hex()})"
                )

    def _pcap(self, fh: BinaryIO, magic: bytes) -> Iterator[Batch]:
        order, resolution = PCAP_MAGICS[magic]
        rest = fh.read(20)
        if len(rest) < 20:
            raise CaptureFormatError(f"{self.path}: pcap global header cut short")
        _vmaj, _vmin, _zone, _sigfigs, _snaplen, linktype = struct.unpack(order + "HHiIII", rest)
        # The upper 16 bits may carry FCS information (pcap-linktype(7)); the link type is the rest.
        linktype &= 0xFFFF
        unpack = struct.Struct(order + "IIII").unpack_from
        buf = b""
        off = size = 0
        base = 24  # file offset of buf[0]
        while True:
            more = fh.read(CHUNK)
            if not more:
                if off < size:
                    self.truncated = True
                break
            # Keep the unread tail (at most one partial record) in front of the new chunk.
            base += off
            buf = buf[off:] + more if off < size else more
            size = len(buf)
            off = 0
            self.bytes_read = base
            records: list[Record] = []
            append = records.append
            # The per-packet loop: one unpack, two comparisons, one tuple.
            while off + 16 <= size:
                sec, frac, caplen, wirelen = unpack(buf, off)
                end = off + 16 + caplen
                if end > size:
                    if caplen > MAX_RECORD:
                        if records:
                            yield buf, records
                        raise CaptureFormatError(
                            f"{self.path}: record at offset {base + off} claims {caplen} bytes"
                        )
                    break
                append((sec + frac * resolution, linktype, off + 16, end, wirelen))
                off = end
            if records:
                yield buf, records
        self.bytes_read = base + off

    def _pcapng(self, fh: BinaryIO, first: bytes) -> Iterator[Batch]:
        order = "<"
        interfaces: list[tuple[int, float]] = []  # (link type, seconds per timestamp unit)
        pending = first
        consumed = 0
        while True:
            head = pending + fh.read(8 - len(pending))
            pending = b""
            if not head:
                break
            if len(head) < 8:
                self.truncated = True
                break
            if head[:4] == PCAPNG_SHB:
                # Section Header Block: its byte-order magic decides how to read everything after it.
                bom = fh.read(4)
                if len(bom) < 4:
                    self.truncated = True
                    break
                if bom == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                else:
                    raise CaptureFormatError(f"{self.path}: pcapng section with bad byte-order magic")
                (length,) = struct.unpack(order + "I", head[4:8])
                body_len = length - 12
                interfaces = []
                if length < 28 or length > MAX_RECORD or length % 4:
                    raise CaptureFormatError(
                        f"{self.path}: pcapng section header at offset {consumed} has length {length}"
                    )
                body = fh.read(body_len)
                if len(body) < body_len:
                    self.truncated = True
                    break
                consumed += length
                self.bytes_read = consumed
                continue
            btype, length = struct.unpack(order + "II", head)
            if length < 12 or length > MAX_RECORD or length % 4:
                raise CaptureFormatError(
                    f"{self.path}: pcapng block at offset {consumed} has length {length}"
                )
            body = fh.read(length - 8)
            if len(body) < length - 8:
                self.truncated = True
                break
            consumed += length
            self.bytes_read = consumed
            if btype == 1:  # Interface Description Block
                if len(body) < 12:
                    raise CaptureFormatError(f"{self.path}: pcapng interface block cut short")
                (linktype,) = struct.unpack_from(order + "H", body, 0)
                interfaces.append((linktype, _if_tsresol(body, order)))
            elif btype == 6:  # Enhanced Packet Block
                if len(body) < 24:
                    self.bad_records += 1
                    continue
                ifid, ts_hi, ts_lo, caplen, wirelen = struct.unpack_from(order + "IIIII", body, 0)
                if ifid >= len(interfaces) or 20 + caplen > len(body) - 4:
                    self.bad_records += 1
                    continue
                linktype, unit = interfaces[ifid]
                yield body, [(((ts_hi << 32) | ts_lo) * unit, linktype, 20, 20 + caplen, wirelen)]
            elif btype == 3:  # Simple Packet Block: no timestamp, interface 0
                if not interfaces or len(body) < 8:
                    self.bad_records += 1
                    continue
                (wirelen,) = struct.unpack_from(order + "I", body, 0)
                caplen = min(wirelen, len(body) - 8)
                yield body, [(0.0, interfaces[0][0], 4, 4 + caplen, wirelen)]
            elif btype == 2:  # obsolete Packet Block
                if len(body) < 24:
                    self.bad_records += 1
                    continue
                ifid, _drops, ts_hi, ts_lo, caplen, wirelen = struct.unpack_from(
                    order + "HHIIII", body, 0
                )
                if ifid >= len(interfaces) or 20 + caplen > len(body) - 4:
                    self.bad_records += 1
                    continue
                linktype, unit = interfaces[ifid]
                yield body, [(((ts_hi << 32) | ts_lo) * unit, linktype, 20, 20 + caplen, wirelen)]
            # Other blocks (name resolution, statistics, custom) carry no packets.


def _if_tsresol(body: bytes, order: str) -> float:
    """Seconds per timestamp unit from an IDB's if_tsresol option (pcapng spec 4.2); default µs."""
    off = 8
    end = len(body) - 4
    while off + 4 <= end:
        code, olen = struct.unpack_from(order + "HH", body, off)
        off += 4
        if code == 0:
            break
        if code == 9 and olen >= 1 and off < end:
            value = body[off]
            # High bit set: a negative power of two; clear: a negative power of ten.
            exponent = value & 0x7F
            return float(2.0**-exponent if value & 0x80 else 10.0**-exponent)
        off += (olen + 3) & ~3
    return 1e-6


def open_capture(path: str | Path) -> CaptureFile:
    """Return a capture to iterate; raises `CaptureFormatError` lazily on the first read."""
    return CaptureFile(Path(path))
