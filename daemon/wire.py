"""A bounds-checked reader for the payload dissectors (TLS, QUIC).

Every read checks that the bytes are there and raises `MalformedPacket` (reason "malformed") when they
are not, so a parser built on it cannot index past its input nor let an `IndexError` or
`struct.error` escape. Lengths read from the wire are the parser's to check against its
specification's limits; the reader only guarantees that what it hands out exists.
"""

from __future__ import annotations

import struct

from douane.daemon.dissect import MalformedPacket

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")


def malformed(what: str) -> MalformedPacket:
    """The one error of the payload dissectors; `what` is a short fixed text, never input bytes."""
    return MalformedPacket("malformed", what)


def varint_at(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The QUIC variable-length integer (RFC 9000 section 16) at `pos`: (value, offset after it)."""
    if pos >= end:
        raise malformed("varint past end")
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > end:
        raise malformed("varint past end")
    value = first & 0x3F
    for i in range(pos + 1, pos + size):
        value = (value << 8) | data[i]
    return value, pos + size


class Reader:
    """Reads big-endian integers, QUIC varints and byte strings from `data[pos:end]`.

    `end` lets a parser read one length-delimited structure (an extension, a QUIC packet) without
    copying it out of the buffer first.
    """

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def left(self) -> int:
        """How many bytes are left before `end`."""
        return self.end - self.pos

    def u8(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise malformed("u8 past end")
        self.pos = pos + 1
        return self.data[pos]

    def u16(self) -> int:
        pos = self.pos
        if pos + 2 > self.end:
            raise malformed("u16 past end")
        self.pos = pos + 2
        value: int = U16.unpack_from(self.data, pos)[0]
        return value

    def u24(self) -> int:
        pos = self.pos
        if pos + 3 > self.end:
            raise malformed("u24 past end")
        self.pos = pos + 3
        d = self.data
        return (d[pos] << 16) | (d[pos + 1] << 8) | d[pos + 2]

    def u32(self) -> int:
        pos = self.pos
        if pos + 4 > self.end:
            raise malformed("u32 past end")
        self.pos = pos + 4
        value: int = U32.unpack_from(self.data, pos)[0]
        return value

    def varint(self) -> int:
        """A QUIC variable-length integer (RFC 9000 section 16): 1, 2, 4 or 8 bytes, 62 bits."""
        value, self.pos = varint_at(self.data, self.pos, self.end)
        return value

    def take(self, n: int) -> bytes:
        """The next `n` bytes (a copy); `n` below zero or past `end` is malformed."""
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise malformed("length past end")
        self.pos = pos + n
        return self.data[pos : pos + n]

    def skip(self, n: int) -> None:
        """Step over `n` bytes without copying them."""
        if n < 0 or self.pos + n > self.end:
            raise malformed("length past end")
        self.pos += n

    def sub(self, n: int) -> Reader:
        """A reader over the next `n` bytes (no copy), stepping this one past them."""
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise malformed("length past end")
        self.pos = pos + n
        return Reader(self.data, pos, pos + n)
