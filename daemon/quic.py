"""QUIC client Initial packets: decrypt them and hand out their CRYPTO frames.

A client's first flight is protected with keys anyone can derive from the connection ID it chose
(RFC 9001 5.2), so a middlebox can read the TLS ClientHello inside. `parse_initials` finds the
client Initial packets coalesced in one UDP datagram (RFC 9000 12.2), removes header protection
(RFC 9001 5.4: AES-ECB mask), decrypts the payload (AEAD_AES_128_GCM) and returns the CRYPTO
frames; `CryptoStream` puts frames from several packets, in any order, back into the byte stream
that `douane.daemon.tls.parse_client_hello` reads.

Versions: QUIC v1 (RFC 9001), v2 (RFC 9369: its own salt, "quicv2" labels, other long-header type
bits), IETF drafts 22 to 34 with their salts, Facebook's mvfst (0xfaceb001, 0xfaceb002,
0xfaceb00e), which use the draft 22 and 23 salts, and Google's T050/T051 (TLS over gQUIC framing).
Google's older gQUIC (Q0xx, whose handshake is not TLS) is not supported.

The cryptography is maintained libraries': HKDF (RFC 5869) on the standard library's HMAC-SHA256, AES-GCM
and AES-ECB from `cryptography`, whose errors become `MalformedPacket`.
`parse_initials` returns a list, an empty one for a datagram that is not a client Initial of a
supported version, or raises `MalformedPacket` (reason "malformed"). Nothing else escapes.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from douane.daemon.tls import MAX_CLIENT_HELLO
from douane.daemon.wire import Reader, malformed, varint_at

VERSION_1 = 0x00000001  # RFC 9000
VERSION_2 = 0x6B3343CF  # RFC 9369 3.1

# Initial salts (RFC 9001 5.2, RFC 9369 3.3.1, and each draft-ietf-quic-tls's section 5.2; the
# gQUIC ones from Chromium's quic_crypto_utils, as nDPI and Wireshark use them).
SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")  # also drafts 33, 34
SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
SALT_DRAFT_22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
SALT_DRAFT_23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")  # drafts 23 to 28
SALT_DRAFT_29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # drafts 29 to 32
SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

FRAME_CRYPTO = 0x06  # RFC 9000 19.6
FRAME_CRYPTO_GQUIC = 0x08  # Google's T05x carry TLS in a CRYPTO frame of type 8 (same layout)


@dataclass(frozen=True, slots=True)
class _Version:
    name: str
    salt: bytes
    labels: bytes  # HKDF label prefix: "quic " (v1 and drafts) or "quicv2 " (RFC 9369 3.3.2)
    v2_types: bool  # RFC 9369 3.2 long-header packet types
    crypto_frame: int


def _versions() -> dict[int, _Version]:
    table = {
        VERSION_1: _Version("v1", SALT_V1, b"quic ", False, FRAME_CRYPTO),
        VERSION_2: _Version("v2", SALT_V2, b"quicv2 ", True, FRAME_CRYPTO),
        # Facebook's mvfst, on the salts of the drafts it followed (as nDPI and Wireshark).
        0xFACEB001: _Version("mvfst-22", SALT_DRAFT_22, b"quic ", False, FRAME_CRYPTO),
        0xFACEB002: _Version("mvfst-27", SALT_DRAFT_23, b"quic ", False, FRAME_CRYPTO),
        0xFACEB00E: _Version("mvfst-exp", SALT_DRAFT_23, b"quic ", False, FRAME_CRYPTO),
        # Google QUIC with TLS (T050, T051): IETF long header and packet protection, gQUIC frames.
        # Q050 is not here: its handshake is Google's CHLO, not a TLS ClientHello.
        0x54303530: _Version("T050", SALT_T050, b"quic ", False, FRAME_CRYPTO_GQUIC),
        0x54303531: _Version("T051", SALT_T051, b"quic ", False, FRAME_CRYPTO_GQUIC),
    }
    for draft in range(22, 35):
        salt = (SALT_DRAFT_22 if draft == 22 else SALT_DRAFT_23 if draft <= 28
                else SALT_DRAFT_29 if draft <= 32 else SALT_V1)
        table[0xFF000000 | draft] = _Version(f"draft-{draft}", salt, b"quic ", False, FRAME_CRYPTO)
    return table


VERSIONS = _versions()

MAX_CID = 20  # RFC 9000 17.2: connection IDs of versions 1 and 2 are at most 20 bytes
MAX_PACKETS = 16  # coalesced packets walked in one datagram (a 1500-byte one holds a few)
TAG = 16  # AEAD_AES_128_GCM tag length (RFC 5116 5.1)
SAMPLE = 16  # RFC 9001 5.4.2: header protection samples 16 bytes
SHA256_SIZE = 32

# Other frame types allowed in Initial packets (RFC 9000 12.4, table 3).
FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CLOSE = 0x1C
FRAME_CLOSE_APP = 0x1D  # not allowed in Initial, but tolerated as harmless
_NONZERO = re.compile(rb"[^\x00]")


@dataclass(frozen=True, slots=True)
class QuicInitial:
    """One decrypted client Initial packet.

    Attributes:
        version: the QUIC version of the long header.
        dcid: destination connection ID, as sent.
        scid: source connection ID.
        crypto: the packet's CRYPTO frames as (offset, data), in packet order.
    """

    version: int
    dcid: bytes
    scid: bytes
    crypto: tuple[tuple[int, bytes], ...]


def quic_version_name(version: int) -> str | None:
    """A short name for a version douane decrypts ("v1", "v2", "draft-29", "mvfst-27", "T051")."""
    v = VERSIONS.get(version)
    return None if v is None else v.name


def _expand_info(label: bytes, length: int) -> bytes:
    """RFC 8446 7.1 HkdfLabel with an empty context (0x00), then HKDF-Expand's first counter (0x01)."""
    full = b"tls13 " + label
    return length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00\x01"


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """RFC 8446 7.1 HKDF-Expand-Label with an empty context, over SHA-256, up to 32 bytes."""
    if length > SHA256_SIZE:
        raise ValueError(f"length: at most {SHA256_SIZE} bytes (one HKDF block), got {length}")
    # RFC 5869 2.3: up to one hash length, HKDF-Expand is the single block
    # T(1) = HMAC(PRK, info | 0x01). Every QUIC Initial secret and key is that short, and one HMAC
    # call costs a fraction of building an HKDFExpand object.
    return hmac.digest(secret, _expand_info(label, length), "sha256")[:length]


@dataclass(frozen=True, slots=True)
class _Derivation:
    """What a version's Initial key derivation can prepare once: its salt's keyed HMAC (copied per
    connection, so the salt's key schedule is not redone) and the HkdfLabels of its three keys."""

    extract: hmac.HMAC
    key: bytes
    iv: bytes
    hp: bytes


def _derivations() -> dict[int, _Derivation]:
    return {
        number: _Derivation(
            hmac.new(v.salt, digestmod="sha256"),
            _expand_info(v.labels + b"key", 16),
            _expand_info(v.labels + b"iv", 12),
            _expand_info(v.labels + b"hp", 16),
        )
        for number, v in VERSIONS.items()
    }


_DERIVATIONS = _derivations()


def initial_secret(version: int, dcid: bytes) -> bytes:
    """RFC 9001 5.2: initial_secret = HKDF-Extract(initial_salt, client_dst_connection_id)."""
    d = _DERIVATIONS.get(version)
    if d is None:
        raise malformed("quic unsupported version")
    # HKDF-Extract (RFC 5869 2.2) is one HMAC with the salt as key.
    extract = d.extract.copy()
    extract.update(dcid)
    return extract.digest()


def client_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """The client Initial (key, iv, hp) for a version and the client's first DCID (RFC 9001 5.2)."""
    secret = hkdf_expand_label(initial_secret(version, dcid), b"client in", SHA256_SIZE)
    # The three labels share one key (the client secret): key it once, copy it per label. Same
    # HMACs as three hkdf_expand_label calls (the RFC 9001 and 9369 vectors check it), a third less
    # time: a new QUIC connection pays this derivation.
    keyed = hmac.new(secret, digestmod="sha256")
    d = _DERIVATIONS[version]
    key = keyed.copy()
    key.update(d.key)
    iv = keyed.copy()
    iv.update(d.iv)
    keyed.update(d.hp)
    return key.digest()[:16], iv.digest()[:12], keyed.digest()[:16]


@lru_cache(maxsize=1024)
def _ciphers(version: int, dcid: bytes) -> tuple[AESGCM, int, CipherContext]:
    """Keyed ciphers per (version, DCID): a client's Initials reuse them, so derive them once.

    Bounded, so random DCIDs cost a derivation each but no memory.
    """
    key, iv, hp = client_keys(version, dcid)
    # RFC 9001 5.4.3: header protection is AES in ECB mode on a single 16-byte sample. ECB keeps
    # no state between blocks, so one encryptor serves every sample (making one costs more than
    # the encryption itself).
    iv_int = int.from_bytes(iv, "big")  # the nonce is made from it for every packet
    return AESGCM(key), iv_int, Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # noqa: S305


def parse_initials(datagram: bytes, original_dcid: bytes | None = None) -> list[QuicInitial]:
    """Decrypt every client Initial packet coalesced in one UDP datagram.

    Args:
        datagram: the UDP payload.
        original_dcid: the DCID of the client's first Initial on this flow, when known. A client
            keeps the keys of that first DCID for all its Initials, even after it switches to the
            connection ID the server chose (RFC 9001 5.2); without it, the packet's own DCID is
            used, which is right for a client's first datagram.

    Returns:
        The decrypted Initials in datagram order; [] when the datagram does not start with a long
        header packet of a supported version, or holds no Initial.

    Raises:
        MalformedPacket: a length past the datagram or the limits of RFC 9000, a packet too short
            to sample, failed decryption (wrong keys or altered bytes), a frame that is not allowed
            in an Initial or runs past the payload.
    """
    out: list[QuicInitial] = []
    n = len(datagram)
    pos = 0
    for _ in range(MAX_PACKETS):
        if n - pos < 7 or not datagram[pos] & 0x80:
            break  # end, PADDING after the last packet, or a short header packet (RFC 9000 12.2)
        start = pos
        first = datagram[pos]
        version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
        v = VERSIONS.get(version)
        if v is None:
            break  # version negotiation (0), gQUIC, GREASE or an unknown version: not ours
        if not first & 0x40:
            # RFC 9000 17.2: the fixed bit is 1 (a client cannot have negotiated RFC 9287 yet).
            raise malformed("quic fixed bit")
        dcid_len = datagram[pos + 5]
        if dcid_len > MAX_CID:
            raise malformed("quic dcid length")
        pos += 6
        dcid = datagram[pos : pos + dcid_len]
        pos += dcid_len
        if pos >= n:
            raise malformed("length past end")
        scid_len = datagram[pos]
        if scid_len > MAX_CID:
            raise malformed("quic scid length")
        scid = datagram[pos + 1 : pos + 1 + scid_len]
        pos += 1 + scid_len
        if pos > n:
            raise malformed("length past end")
        ptype = (first >> 4) & 0x03
        if v.v2_types:
            # RFC 9369 3.2: v2 long packet types are Initial 0b01, 0-RTT 0b10, Handshake 0b11,
            # Retry 0b00; map them onto v1's 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry.
            ptype = (ptype - 1) & 0x03
        if ptype == 3:
            break  # Retry (a server's) has no length field and ends the datagram
        if ptype == 0:
            token, pos = varint_at(datagram, pos, n)  # Token (RFC 9000 17.2.2)
            pos += token
        length, pn_offset = varint_at(datagram, pos, n)  # packet number and payload (RFC 9000 17.2)
        end = pn_offset + length
        if end > n:
            raise malformed("quic packet length")
        pos = end
        if ptype != 0:
            continue  # 0-RTT or Handshake coalesced after the Initial: not ours to read
        keys = original_dcid if original_dcid is not None else dcid
        crypto = _decrypt(datagram, start, pn_offset, end, first, version, keys, v.crypto_frame)
        out.append(QuicInitial(version, dcid, scid, crypto))
    return out


def _decrypt(datagram: bytes, start: int, pn_offset: int, end: int, first: int, version: int,
             key_dcid: bytes, crypto_frame: int) -> tuple[tuple[int, bytes], ...]:
    """Remove header protection, decrypt, and read the frames of one Initial at datagram[start:end]."""
    # RFC 9001 5.4.2: the sample starts 4 bytes after the packet number's start, and the packet
    # must hold at least 4 bytes of packet number and payload plus the sample.
    if end - pn_offset < 4 + SAMPLE:
        raise malformed("quic packet too short to sample")
    aead, iv, hp = _ciphers(version, key_dcid)
    sample_at = pn_offset + 4
    mask = hp.update(datagram[sample_at : sample_at + SAMPLE])
    first ^= mask[0] & 0x0F  # RFC 9001 5.4.1: long header, 4 low bits protected
    pn_len = (first & 0x03) + 1
    protected = int.from_bytes(datagram[pn_offset : pn_offset + pn_len], "big")
    pn = protected ^ int.from_bytes(mask[1 : 1 + pn_len], "big")
    pn_bytes = pn.to_bytes(pn_len, "big")
    if end - pn_offset - pn_len < TAG:
        raise malformed("quic payload shorter than the tag")
    header = bytes([first]) + datagram[start + 1 : pn_offset] + pn_bytes
    # RFC 9001 5.3: the nonce is the IV xor the packet number (a client's first Initials number
    # from 0, so the truncated number is the full one).
    nonce = (iv ^ pn).to_bytes(12, "big")
    try:
        payload = aead.decrypt(nonce, datagram[pn_offset + pn_len : end], header)
    except InvalidTag:
        raise malformed("quic initial decryption failed") from None
    return _crypto_frames(payload, crypto_frame)


def _crypto_frames(payload: bytes, crypto_frame: int) -> tuple[tuple[int, bytes], ...]:
    """The CRYPTO frames of a decrypted Initial payload, skipping the other allowed frames."""
    r = Reader(payload)
    frames = []
    n = len(payload)
    # A client pads its Initial to 1200 bytes with PADDING frames after the last real frame:
    # from `padded` on, the payload is zeros only, found in one C call from the end.
    padded = len(payload.rstrip(b"\x00"))
    while r.pos < n:
        ftype = r.varint()
        if ftype == FRAME_PADDING:
            if r.pos >= padded:
                break
            nonzero = _NONZERO.search(payload, r.pos)  # PADDING between frames, rarer
            r.pos = n if nonzero is None else nonzero.start()
        elif ftype == crypto_frame:
            offset = r.varint()
            data = r.take(r.varint())
            # RFC 9000 19.6: offset + length is at most 2^62-1; douane never wants that far.
            if offset + len(data) > MAX_CLIENT_HELLO:
                raise malformed("quic crypto offset too large")
            frames.append((offset, data))
        elif ftype in (FRAME_ACK, FRAME_ACK_ECN):
            # RFC 9000 19.3: Largest, Delay, Range Count, First Range, then Count (Gap, Length)
            # pairs and, for type 3, three ECN counts. Each pair takes 2 bytes or more, so the
            # loop is bounded by the payload.
            r.varint()
            r.varint()
            count = r.varint()
            r.varint()
            if count > r.left() // 2:
                raise malformed("quic ack range count")
            for _ in range(count):
                r.varint()
                r.varint()
            if ftype == FRAME_ACK_ECN:
                r.varint()
                r.varint()
                r.varint()
        elif ftype == FRAME_PING:
            pass
        elif ftype in (FRAME_CLOSE, FRAME_CLOSE_APP):
            # RFC 9000 19.19: Error Code, [Frame Type], Reason Phrase Length, Reason Phrase.
            r.varint()
            if ftype == FRAME_CLOSE:
                r.varint()
            r.skip(r.varint())
        else:
            raise malformed("quic frame not allowed in initial")
    return tuple(frames)


class CryptoStream:
    """Reassembles CRYPTO frames, arriving in any order and across packets, into a byte stream.

    `contiguous()` is the stream's prefix from offset 0 up to the first hole. Overlapping frames
    are allowed (RFC 9000 2.2 lets a sender retransmit any range); the first bytes received for an
    offset win. Memory is bounded: nothing past `MAX_CLIENT_HELLO`, and no more than
    `MAX_PENDING` frames held back behind a hole.
    """

    MAX_PENDING = 256

    __slots__ = ("_buf", "_pending")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: dict[int, bytes] = {}

    def add(self, offset: int, data: bytes) -> None:
        """Add one frame's data at its stream offset.

        Raises:
            MalformedPacket: the frame ends past `MAX_CLIENT_HELLO`, or too many frames wait
                behind a hole.
        """
        if offset < 0 or offset + len(data) > MAX_CLIENT_HELLO:
            raise malformed("quic crypto stream too long")
        have = len(self._buf)
        if offset + len(data) <= have or not data:
            return
        if offset > have:
            old = self._pending.get(offset)
            if old is None or len(old) < len(data):
                if old is None and len(self._pending) >= self.MAX_PENDING:
                    raise malformed("quic crypto frames too fragmented")
                self._pending[offset] = data
            return
        self._buf += data[have - offset :]
        pending = self._pending
        while pending:
            have = len(self._buf)
            # Frames now reachable: any that starts at or before the end of the prefix.
            ready = [o for o in pending if o <= have]
            if not ready:
                break
            for o in ready:
                chunk = pending.pop(o)
                if o + len(chunk) > len(self._buf):
                    self._buf += chunk[len(self._buf) - o :]

    def contiguous(self) -> bytes:
        """The bytes from offset 0 up to the first missing byte."""
        return bytes(self._buf)
