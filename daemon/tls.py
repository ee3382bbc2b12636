"""TLS ClientHello: the server name a client asks for, from a TCP stream or a QUIC CRYPTO stream.

The dissectors here follow the contract of STYLE.md: they return a `ClientHello`, return None when
more bytes are needed, or raise `MalformedPacket` (reason "malformed"). Nothing else escapes. Every
length read from the wire is checked against the limit of RFC 8446 (TLS 1.3, whose ClientHello
layout is that of TLS 1.0-1.2 plus extensions) and against `MAX_CLIENT_HELLO`, the most douane
reassembles.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from douane.daemon.hostname import clean_hostname
from douane.daemon.wire import Reader, malformed

# The most handshake bytes douane buffers for one ClientHello. RFC 8446 4 allows a handshake
# message of 2^24-1 bytes; real ones are 200 bytes to about 2 KiB, up to some 10 KiB with
# post-quantum key shares and many extensions. Beyond this bound, the flow is not worth the memory.
MAX_CLIENT_HELLO = 64 * 1024

HANDSHAKE_CLIENT_HELLO = 1  # RFC 8446 4: HandshakeType client_hello(1)
CONTENT_HANDSHAKE = 22  # RFC 8446 5.1: ContentType handshake(22)
MAX_RECORD = 1 << 14  # RFC 8446 5.1: TLSPlaintext.length MUST NOT exceed 2^14 bytes

EXT_SERVER_NAME = 0  # RFC 6066 3
EXT_ALPN = 16  # RFC 7301 3.1
EXT_SUPPORTED_VERSIONS = 43  # RFC 8446 4.2.1
EXT_ECH = 0xFE0D  # draft-ietf-tls-esni (encrypted_client_hello), since draft 13
PRINTABLE = bytes(range(0x21, 0x7F))  # visible ASCII, what an ALPN name may hold to be kept
NAME_TYPE_HOST = 0  # RFC 6066 3: NameType host_name(0)
EXT_HEADER = struct.Struct("!HH")  # extension_type, extension_data length (RFC 8446 4.2)
# The extensions each kind of parse reads (and refuses twice, RFC 8446 4.2); the others are skipped.
ALL_READ = frozenset({EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS, EXT_ECH})
NAMES_READ = frozenset({EXT_SERVER_NAME, EXT_ECH})


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What douane keeps of a ClientHello.

    Attributes:
        sni: the server_name host_name, cleaned by `clean_hostname` (None if absent or invalid).
        ech: the encrypted_client_hello extension is present; `sni` is then the outer (public)
            name, not the one the client really wants.
        alpn: the offered application protocols, in order, printable ASCII ones only.
        version: the highest version offered: the largest non-GREASE supported_versions entry,
            else legacy_version (0x0303 is TLS 1.2, 0x0304 TLS 1.3).

    Parsed with `names_only`, `alpn` is () and `version` 0: not read.
    """

    sni: str | None
    ech: bool
    alpn: tuple[str, ...]
    version: int


def _grease(value: int) -> bool:
    """RFC 8701 2: GREASE values are 0x0A0A, 0x1A1A, ... 0xFAFA."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def looks_like_tls(first: bytes) -> bool:
    """Whether a stream's first bytes can start a TLS handshake record.

    Checks the record header (type 22, version 3.0 to 3.4) and, when present, the handshake type
    (client_hello). True on a prefix that agrees so far (one or two bytes); the parser decides.
    """
    n = len(first)
    if n == 0 or first[0] != CONTENT_HANDSHAKE:
        return False
    if n > 1 and first[1] != 3:
        return False
    if n > 2 and first[2] > 4:
        return False
    return not (n > 5 and first[5] != HANDSHAKE_CLIENT_HELLO)


def parse_client_hello(handshake: bytes, names_only: bool = False) -> ClientHello | None:
    """Parse a ClientHello from handshake-layer bytes (what QUIC CRYPTO frames carry).

    Args:
        handshake: bytes starting at the Handshake header (type 1, 24-bit length); bytes after
            the message are ignored.
        names_only: read server_name and encrypted_client_hello only, what identification
            needs (ALPN and supported_versions are neither read nor checked).

    Returns:
        The ClientHello, or None when `handshake` holds only part of the message.

    Raises:
        MalformedPacket: not a ClientHello, a length beyond its limit or its enclosing structure,
            a duplicated extension that douane reads.
    """
    return _client_hello_at(handshake, 0, len(handshake), names_only)


def _client_hello_at(data: bytes, pos: int, end: int, names_only: bool) -> ClientHello | None:
    """`parse_client_hello` on the handshake bytes `data[pos:end]`, without copying them out."""
    n = end - pos
    if n < 4:
        if n > 0 and data[pos] != HANDSHAKE_CLIENT_HELLO:
            raise malformed("tls handshake type")
        return None
    if data[pos] != HANDSHAKE_CLIENT_HELLO:
        raise malformed("tls handshake type")
    length = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
    if length > MAX_CLIENT_HELLO:
        raise malformed("tls client hello too long")
    if n - 4 < length:
        return None
    return _client_hello_body(data, pos + 4, pos + 4 + length, names_only)


def _client_hello_body(data: bytes, pos: int, end: int, names_only: bool) -> ClientHello:
    # RFC 8446 4.1.2 ClientHello. Read with plain offsets, each checked against `end` before
    # the bytes are used: this runs once per TLS connection and QUIC flow, on the packet path.
    if pos + 35 > end:  # legacy_version, random, the session id's length
        raise malformed("tls client hello truncated")
    legacy_version = (data[pos] << 8) | data[pos + 1]
    if legacy_version >> 8 != 3:
        raise malformed("tls client hello version")
    session_id = data[pos + 34]
    if session_id > 32:  # legacy_session_id<0..32>
        raise malformed("tls session id length")
    pos += 35 + session_id
    if pos + 2 > end:
        raise malformed("tls client hello truncated")
    suites = (data[pos] << 8) | data[pos + 1]  # cipher_suites<2..2^16-2>, two bytes each
    if suites < 2 or suites & 1:
        raise malformed("tls cipher suites length")
    pos += 2 + suites
    if pos + 1 > end:
        raise malformed("tls client hello truncated")
    compressions = data[pos]  # legacy_compression_methods<1..2^8-1>
    if compressions < 1:
        raise malformed("tls compression methods length")
    pos += 1 + compressions
    if pos > end:
        raise malformed("tls client hello truncated")
    sni: str | None = None
    ech = False
    alpn: tuple[str, ...] = ()
    version = 0 if names_only else legacy_version
    if pos == end:
        # TLS 1.0-1.2 (RFC 5246 7.4.1.2): the extensions block may be absent altogether.
        return ClientHello(None, False, (), version)
    if pos + 2 > end:
        raise malformed("tls extensions length")
    ext_len = (data[pos] << 8) | data[pos + 1]  # extensions<8..2^16-1> in TLS 1.3; any in 1.2
    pos += 2
    if ext_len != end - pos:
        raise malformed("tls extensions length")
    # 15 to 20 extensions in a browser's hello: headers are read with one struct call each, and
    # the extensions douane does not read cost nothing more.
    read = NAMES_READ if names_only else ALL_READ
    seen: set[int] = set()
    while pos < end:
        if pos + 4 > end:
            raise malformed("tls extension header")
        ext_type, size = EXT_HEADER.unpack_from(data, pos)
        pos += 4
        if pos + size > end:  # extension_data<0..2^16-1> within the extensions block
            raise malformed("tls extension length")
        if ext_type not in read:
            pos += size
            continue
        # RFC 8446 4.2: "There MUST NOT be more than one extension of the same type".
        if ext_type in seen:
            raise malformed("tls duplicate extension")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            sni = _server_name(data, pos, pos + size)
        elif ext_type == EXT_ALPN:
            alpn = _alpn(Reader(data, pos, pos + size))
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            version = _supported_versions(Reader(data, pos, pos + size), legacy_version)
        elif ext_type == EXT_ECH:
            ech = True
        pos += size
    return ClientHello(sni, ech, alpn, version)


def _server_name(data: bytes, pos: int, end: int) -> str | None:
    """RFC 6066 3: ServerNameList server_name_list<1..2^16-1>; the first host_name wins."""
    if pos == end:
        # A server echoes an empty server_name; a client may not, but it says nothing either.
        return None
    if pos + 2 > end or pos + 2 + ((data[pos] << 8) | data[pos + 1]) != end:
        raise malformed("tls server name list length")
    pos += 2
    while pos < end:
        if pos + 3 > end:
            raise malformed("tls server name entry")
        name_type = data[pos]
        stop = pos + 3 + ((data[pos + 1] << 8) | data[pos + 2])  # HostName<1..2^16-1>
        if stop > end:
            raise malformed("tls server name length")
        if name_type == NAME_TYPE_HOST:
            return clean_hostname(data[pos + 3 : stop])
        pos = stop
    return None


def _alpn(r: Reader) -> tuple[str, ...]:
    """RFC 7301 3.1: ProtocolNameList protocol_name_list<2..2^16-1>, ProtocolName<1..2^8-1>."""
    names = r.sub(r.u16())
    if r.left():
        raise malformed("tls alpn list length")
    out = []
    while names.left():
        size = names.u8()
        if size == 0:
            raise malformed("tls empty alpn name")
        name = names.take(size)
        # Opaque bytes on the wire: keep only names that are safe to log (GREASE ALPN values,
        # RFC 8701, and binary junk are dropped).
        if not name.translate(None, PRINTABLE):
            out.append(name.decode("ascii"))
    return tuple(out)


def _supported_versions(r: Reader, legacy_version: int) -> int:
    """RFC 8446 4.2.1: ProtocolVersion versions<2..254> in a ClientHello."""
    size = r.u8()
    if size < 2 or size & 1 or size != r.left():
        raise malformed("tls supported versions length")
    best = 0
    for _ in range(size // 2):
        v = r.u16()
        if not _grease(v) and v > best:
            best = v
    return best or legacy_version


def parse_tls_stream(stream: bytes, names_only: bool = False) -> ClientHello | None:
    """Parse the ClientHello at the start of a TCP client's byte stream.

    The ClientHello may span several TLS records (RFC 8446 5.1: handshake messages may be
    fragmented across records) and, below them, any number of TCP segments: the caller hands the
    stream's reassembled first bytes and calls again with more when this returns None.

    Args:
        stream: the client's first bytes, from the first record header on.
        names_only: as for `parse_client_hello`.

    Returns:
        The ClientHello, or None when more bytes are needed.

    Raises:
        MalformedPacket: not a TLS handshake record, a record longer than 2^14 or empty, a record
            of another type before the ClientHello is complete, a ClientHello beyond
            `MAX_CLIENT_HELLO`, or a malformed ClientHello.
    """
    pos = 0
    n = len(stream)
    fragments: list[bytes] = []
    have = 0
    need = -1  # handshake bytes needed (4 + length), once the header is known
    while True:
        if n - pos < 5:
            if not looks_like_tls(stream[pos:]) and pos < n:
                raise malformed("tls record header")
            return None
        ctype = stream[pos]
        major = stream[pos + 1]
        minor = stream[pos + 2]
        length = (stream[pos + 3] << 8) | stream[pos + 4]
        if ctype != CONTENT_HANDSHAKE:
            raise malformed("tls record type")
        if major != 3 or minor > 4:  # SSL 3.0 to TLS 1.3 record versions (0x0300..0x0304)
            raise malformed("tls record version")
        if length == 0:
            # RFC 8446 5.1: zero-length fragments of Handshake MUST NOT be sent.
            raise malformed("tls empty handshake record")
        if length > MAX_RECORD:
            raise malformed("tls record too long")
        start = pos + 5
        end = start + length
        if not fragments and end <= n:
            # Most ClientHellos fit one record: parse them in place, no copy.
            hello = _client_hello_at(stream, start, end, names_only)
            if hello is not None:
                return hello
        if end > n:
            # A partial record still lets the handshake header be checked early.
            fragments.append(stream[start:n])
            if need < 0:
                _check_header(b"".join(fragments))
            return None
        fragments.append(stream[start:end])
        have += length
        pos = end
        if need < 0 and have >= 4:
            head = _check_header(b"".join(fragments))
            need = 4 + head
        if need >= 0 and have >= need:
            return parse_client_hello(b"".join(fragments), names_only)


def _check_header(handshake: bytes) -> int:
    """The ClientHello length from a handshake header, checked; -1 with fewer than 4 bytes."""
    if handshake and handshake[0] != HANDSHAKE_CLIENT_HELLO:
        raise malformed("tls handshake type")
    if len(handshake) < 4:
        return -1
    length = (handshake[1] << 16) | (handshake[2] << 8) | handshake[3]
    if length > MAX_CLIENT_HELLO:
        raise malformed("tls client hello too long")
    return length
