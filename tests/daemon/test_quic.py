"""QUIC client Initials: key derivation, header protection, decryption, CRYPTO reassembly.

Protocol vectors are those of RFC 9001 Appendix A and RFC 9369 Appendix A (files in data/, hex).
Other packets are protected here by `protect` below, the inverse of what douane does, written
from RFC 9001 5.3-5.4 with `cryptography`'s primitives.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import corpus_payloads
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.dissect import MalformedPacket
from douane.daemon.quic import (
    VERSION_1,
    VERSION_2,
    VERSIONS,
    CryptoStream,
    QuicInitial,
    client_keys,
    hkdf_expand_label,
    initial_secret,
    parse_initials,
    quic_version_name,
)
from douane.daemon.tls import MAX_CLIENT_HELLO, ClientHello, parse_client_hello

DATA = Path(__file__).resolve().parent / "data"




def hex_file(name: str) -> bytes:
    """A hex fixture: '#' lines are comments."""
    text = (DATA / name).read_text()
    return bytes.fromhex("".join(line for line in text.splitlines() if not line.startswith("#")))


# RFC 9001 A / RFC 9369 A: the client's first DCID, the same in both appendices.
DCID = bytes.fromhex("8394c8f03e515708")
RFC9001_PACKET = hex_file("rfc9001_a2_client_initial.hex")
RFC9369_PACKET = hex_file("rfc9369_a2_client_initial.hex")
# RFC 9001 A.2: the unprotected payload starts with a CRYPTO frame: type 06, offset 00,
# length 40f1 (varint 241), then the ClientHello (241 bytes); PADDING to 1162 bytes.
RFC_CRYPTO_PREFIX = bytes.fromhex("060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868")


def varint(value: int) -> bytes:
    """RFC 9000 16: the shortest encoding of a variable-length integer."""
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return struct.pack("!H", 0x4000 | value)
    if value < 0x4000_0000:
        return struct.pack("!I", 0x8000_0000 | value)
    return struct.pack("!Q", 0xC000_0000_0000_0000 | value)


def crypto_frame(offset: int, data: bytes) -> bytes:
    """CRYPTO frame (RFC 9000 19.6): type 06, offset, length, data."""
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect(payload: bytes, version: int = VERSION_1, dcid: bytes = DCID, scid: bytes = b"",
            pn: int = 0, key_dcid: bytes | None = None, token: bytes = b"", pad_to: int = 1200,
            pn_len: int = 4) -> bytes:
    """A protected client Initial packet (RFC 9001 5.3-5.4), padded with PADDING frames so that
    the packet is `pad_to` bytes long."""
    key, iv, hp = client_keys(version, key_dcid or dcid)
    ptype = 1 if version == VERSION_2 else 0  # RFC 9369 3.2: v2 Initial is type 0b01
    first = 0xC0 | (ptype << 4) | (pn_len - 1)
    head = bytes([first]) + struct.pack("!I", version) + bytes([len(dcid)]) + dcid
    head += bytes([len(scid)]) + scid + varint(len(token)) + token
    pad = max(0, pad_to - len(head) - 2 - pn_len - len(payload) - 16)
    payload = payload + bytes(pad)
    length = varint(pn_len + len(payload) + 16)
    if len(length) == 1 and pad:  # keep the announced size honest: a 2-byte length field
        length = struct.pack("!H", 0x4000 | (pn_len + len(payload) + 16))
    header = head + length + pn.to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    pn_offset = len(header) - pn_len
    sample = sealed[4 - pn_len : 4 - pn_len + 16]
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    masked = bytearray(header)
    masked[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        masked[pn_offset + i] ^= mask[1 + i]
    return bytes(masked) + sealed


def zero_rtt(version: int = VERSION_1, dcid: bytes = DCID, size: int = 60) -> bytes:
    """A 0-RTT long-header packet (not decrypted by douane: only its length is read)."""
    ptype = 2 if version == VERSION_2 else 1
    body = bytes(size)
    return (bytes([0xC0 | (ptype << 4) | 3]) + struct.pack("!I", version) + bytes([len(dcid)]) + dcid
            + b"\x00" + struct.pack("!H", 0x4000 | len(body)) + body)


def outcome(datagram: bytes, original: bytes | None = None) -> list[QuicInitial]:
    """parse_initials with only its outcomes allowed (MalformedPacket is returned as [])."""
    try:
        result = parse_initials(datagram, original)
    except MalformedPacket as exc:
        assert exc.reason == "malformed"
        return []
    assert isinstance(result, list)
    return result


def hello_of(initials: list[QuicInitial]) -> ClientHello | None:
    stream = CryptoStream()
    for initial in initials:
        for offset, data in initial.crypto:
            stream.add(offset, data)
    return parse_client_hello(stream.contiguous())


def big_hello(name: bytes, size: int = 3000) -> bytes:
    """A ClientHello of `size` bytes (as Chrome's with post-quantum key shares, too big for one
    Initial): server_name, then a padding extension (RFC 7685) to fill."""
    sni = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    fixed = 4 + 2 + 32 + 1 + 4 + 2 + 2 + len(sni) + 4  # header, version, random, ids, suites...
    exts = sni + struct.pack("!HH", 21, size - fixed) + bytes(size - fixed)
    body = b"\x03\x03" + b"\x42" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


BIG_HELLO = big_hello(b"big.example")
RFC_HELLO = parse_initials(RFC9001_PACKET)[0].crypto[0][1]

class TestKeys:
    def test_rfc9001_a1(self) -> None:
        """RFC 9001 A.1: initial secret, client secret, key, iv and hp from DCID 8394c8f03e515708
        (a typo in the v1 salt would change every value)."""
        secret = initial_secret(VERSION_1, DCID)
        assert secret.hex() == "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"
        client = hkdf_expand_label(secret, b"client in", 32)
        assert client.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
        key, iv, hp = client_keys(VERSION_1, DCID)
        assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
        assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
        assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"

    def test_rfc9369_a1(self) -> None:
        """RFC 9369 A.1: the v2 salt and "quicv2" labels give the appendix's client keys."""
        client = hkdf_expand_label(initial_secret(VERSION_2, DCID), b"client in", 32)
        assert client.hex() == "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
        key, iv, hp = client_keys(VERSION_2, DCID)
        assert key.hex() == "8b1a0bc121284290a29e0971b5cd045d"
        assert iv.hex() == "91f73e2351d8fa91660e909f"
        assert hp.hex() == "45b95e15235d6f45a6b19cbcb0294ba9"

    def test_rfc9001_a1_server(self) -> None:
        """RFC 9001 A.1: the server secret from the same initial secret (checks the label code)."""
        server = hkdf_expand_label(initial_secret(VERSION_1, DCID), b"server in", 32)
        assert server.hex() == "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b"

    def test_unsupported_version(self) -> None:
        """Deriving keys for a version douane does not know is malformed, not a KeyError."""
        with pytest.raises(MalformedPacket):
            initial_secret(0x51303530, DCID)


class TestQuicVersionName:
    @pytest.mark.parametrize(("version", "name"), [
        (1, "v1"), (0x6B3343CF, "v2"), (0xFF00001D, "draft-29"), (0xFF000017, "draft-23"),
        (0xFF000022, "draft-34"), (0xFACEB002, "mvfst-27"), (0x54303531, "T051"),
    ])
    def test_supported(self, version: int, name: str) -> None:
        """Supported versions have a short name."""
        assert quic_version_name(version) == name

    @pytest.mark.parametrize("version", [0, 2, 0xFF000015, 0xFF000023, 0x51303530, 0x1A2A3A4A, 0x709A50C4])
    def test_unsupported(self, version: int) -> None:
        """Version negotiation, gQUIC Q050, GREASE, drafts before 22 or after 34: None."""
        assert quic_version_name(version) is None


class TestParseInitials:
    def test_rfc9001_a2(self) -> None:
        """RFC 9001 A.2: the protected client Initial decrypts to one CRYPTO frame whose
        ClientHello names example.com."""
        (initial,) = parse_initials(RFC9001_PACKET)
        assert (initial.version, initial.dcid, initial.scid) == (VERSION_1, DCID, b"")
        assert [(offset, len(data)) for offset, data in initial.crypto] == [(0, 241)]
        assert initial.crypto[0][1][:28] == RFC_CRYPTO_PREFIX[4:]
        assert parse_client_hello(initial.crypto[0][1]) == ClientHello("example.com", False, ("alpn",),
                                                                       0x0304)

    def test_rfc9369_a2(self) -> None:
        """RFC 9369 A.2: the v2 client Initial (type bits 01) decrypts to the same ClientHello."""
        (initial,) = parse_initials(RFC9369_PACKET)
        assert initial.version == VERSION_2
        hello = parse_client_hello(initial.crypto[0][1])
        assert hello is not None and hello.sni == "example.com"

    def test_rfc9001_a2_with_original_dcid(self) -> None:
        """Given the DCID it was protected for, the packet decrypts the same."""
        assert parse_initials(RFC9001_PACKET, DCID) == parse_initials(RFC9001_PACKET)

    def test_coalesced_with_0rtt_and_padding(self) -> None:
        """An Initial, a 0-RTT packet and trailing zeros in one datagram (RFC 9000 12.2): the
        Initial is read, the rest skipped."""
        initial = protect(crypto_frame(0, RFC_HELLO), pad_to=0)
        datagram = initial + zero_rtt() + bytes(300)
        (only,) = parse_initials(datagram)
        assert hello_of([only]) == parse_client_hello(RFC_HELLO)

    def test_two_initials_in_one_datagram(self) -> None:
        """Two coalesced Initials, their CRYPTO frames in reverse order, give the whole hello."""
        first = protect(crypto_frame(1500, BIG_HELLO[1500:]), pn=1, pad_to=0)
        second = protect(crypto_frame(0, BIG_HELLO[:1500]), pn=0, pad_to=0)
        initials = parse_initials(first + second)
        assert [i.crypto[0][0] for i in initials] == [1500, 0]
        hello = hello_of(initials)
        assert hello is not None and hello.sni == "big.example"

    @pytest.mark.parametrize("version", sorted(VERSIONS))
    def test_every_version(self, version: int) -> None:
        """Every supported version's salt, labels and type bits round-trip a protected Initial."""
        frame_type = VERSIONS[version].crypto_frame
        payload = bytes([frame_type]) + varint(0) + varint(len(RFC_HELLO)) + RFC_HELLO
        (initial,) = parse_initials(protect(payload, version))
        assert initial.version == version
        assert initial.crypto == ((0, RFC_HELLO),)

    def test_token_and_scid(self) -> None:
        """A Retry token and a source connection ID are stepped over / reported."""
        (initial,) = parse_initials(protect(crypto_frame(0, RFC_HELLO), scid=b"\x01" * 20,
                                            token=b"t" * 90))
        assert initial.scid == b"\x01" * 20
        assert initial.crypto == ((0, RFC_HELLO),)

    @pytest.mark.parametrize("pn_len", [1, 2, 3, 4])
    def test_packet_number_lengths(self, pn_len: int) -> None:
        """Packet numbers of 1 to 4 bytes (RFC 9000 17.2) are unmasked and used in the nonce."""
        (initial,) = parse_initials(protect(crypto_frame(0, RFC_HELLO), pn=7, pn_len=pn_len))
        assert initial.crypto == ((0, RFC_HELLO),)

    def test_keys_of_the_first_dcid(self) -> None:
        """After a client switches DCID, its Initials still use the first DCID's keys: with
        `original_dcid` they decrypt, with their own DCID they fail (RFC 9001 5.2)."""
        later = protect(crypto_frame(0, RFC_HELLO), dcid=b"\x77" * 8, key_dcid=DCID, pn=1)
        (initial,) = parse_initials(later, DCID)
        assert initial.dcid == b"\x77" * 8
        with pytest.raises(MalformedPacket):
            parse_initials(later)

    def test_ack_ping_close_frames(self) -> None:
        """ACK (with ranges and ECN counts), PING, PADDING and CONNECTION_CLOSE are stepped over."""
        payload = (b"\x01"  # PING
                   + b"\x02" + varint(5) + varint(0) + varint(1) + varint(0) + varint(0) + varint(1)
                   + b"\x03" + varint(9) + varint(0) + varint(0) + varint(0) + b"\x01\x02\x03"
                   + b"\x00\x00" + crypto_frame(0, RFC_HELLO)
                   + b"\x1c" + varint(0) + varint(6) + varint(3) + b"bye")
        (initial,) = parse_initials(protect(payload))
        assert initial.crypto == ((0, RFC_HELLO),)

    @pytest.mark.parametrize(("datagram", "why"), [
        (b"", "empty"),
        (b"\x40" + DCID + bytes(40), "a short header packet"),
        (bytes(1200), "zeros"),
        (b"\xc0\x00\x00\x00\x00\x08" + DCID + b"\x00\x00\x00\x00\x01", "version negotiation"),
        (b"\xc0\x51\x30\x35\x30\x08" + DCID + bytes(1180), "gQUIC Q050"),
        (b"\xc0\x1a\x2a\x3a\x4a\x08" + DCID + bytes(1180), "a GREASE version"),
        (b"\xf0\x00\x00\x00\x01\x00\x08" + DCID + bytes(20), "a Retry"),
    ])
    def test_not_a_client_initial(self, datagram: bytes, why: str) -> None:
        """Datagrams without a supported long-header Initial give an empty list."""
        assert parse_initials(datagram) == [], why

    def test_handshake_only(self) -> None:
        """A datagram holding only a Handshake packet (the client's second flight) gives []."""
        handshake = bytearray(zero_rtt())
        handshake[0] = 0xE3  # type 2: Handshake
        assert parse_initials(bytes(handshake)) == []

    @pytest.mark.parametrize("where", [0, 5, 14, 18, 20, 30, 600, 1199])
    def test_flipped_byte(self, where: int) -> None:
        """A changed byte anywhere in the RFC packet fails authentication (or a length check)."""
        data = bytearray(RFC9001_PACKET)
        data[where] ^= 0x01  # at 0: a protected header bit, which the AEAD also covers
        with pytest.raises(MalformedPacket):
            parse_initials(bytes(data))

    @pytest.mark.parametrize(("datagram", "why"), [
        (RFC9001_PACKET[:1000], "cut short: length past the datagram"),
        (RFC9001_PACKET[:6] + b"\x15" + bytes(30), "a 21-byte DCID"),
        (RFC9001_PACKET[:14] + b"\x15" + bytes(30), "a 21-byte SCID"),
        (b"\x80" + RFC9001_PACKET[1:], "fixed bit clear"),
        (RFC9001_PACKET[:16] + b"\xbf\xff\xff\xff\xff\xff\xff\xff", "token length past the end"),
        (protect(crypto_frame(0, RFC_HELLO))[:18] + b"\x40\x05" + bytes(5), "too short to sample"),
        (protect(b"\x08\x00\x00"), "a STREAM frame in an Initial"),
        (protect(crypto_frame(0, b"x" * 50)[:-10], pad_to=0), "CRYPTO data past the payload"),
        (protect(b"\x06" + varint(MAX_CLIENT_HELLO) + varint(4) + b"abcd"), "CRYPTO past the bound"),
        (protect(b"\x02" + varint(5) + varint(0) + varint(900) + varint(0)), "ACK range count"),
    ])
    def test_malformed(self, datagram: bytes, why: str) -> None:
        """Bad lengths, bad frames and failed decryption are malformed."""
        with pytest.raises(MalformedPacket):
            parse_initials(datagram)

    def test_wrong_original_dcid(self) -> None:
        """Keys from another DCID fail authentication: malformed, not a crash."""
        with pytest.raises(MalformedPacket):
            parse_initials(RFC9001_PACKET, b"\x00" * 8)

    @given(st.binary(max_size=1300))
    @example(b"\xc0\x00\x00\x00\x01\x00\x00\x00")
    @example(b"\xc0\x00\x00\x00\x01\x00\x00\x00\x40")
    def test_fuzz_random(self, data: bytes) -> None:
        """Random datagrams give a list or MalformedPacket, nothing else."""
        outcome(data)

    @given(st.sampled_from(["v1", "v2"]), st.integers(0, 1199), st.integers(0, 255),
           st.integers(0, 1200), st.binary(max_size=64))
    @example("v1", 17, 0xFF, 1200, b"")  # length field's first byte
    @example("v1", 21, 0x00, 1200, b"")  # packet number byte
    @example("v2", 0, 0xFF, 1200, b"")
    def test_fuzz_rfc_mutated(self, which: str, pos: int, value: int, cut: int, tail: bytes) -> None:
        """The RFC packets with one byte changed, cut and extended keep the contract."""
        data = bytearray(RFC9001_PACKET if which == "v1" else RFC9369_PACKET)
        data[pos] = value
        outcome(bytes(data[:cut]) + tail)

    @given(st.binary(max_size=300))
    @example(b"\x02\x3f\x3f\x3f")
    @example(b"\x06\x00\x7f\xff")
    def test_fuzz_decrypted_payload(self, payload: bytes) -> None:
        """Whatever a correctly protected payload holds, the frame reader keeps the contract and
        CRYPTO data stays within the bound."""
        for initial in outcome(protect(payload)):
            for offset, data in initial.crypto:
                assert offset + len(data) <= MAX_CLIENT_HELLO


class TestCryptoStream:
    def test_in_order(self) -> None:
        """Frames in order build the stream."""
        stream = CryptoStream()
        stream.add(0, b"abc")
        stream.add(3, b"def")
        assert stream.contiguous() == b"abcdef"

    def test_out_of_order_and_overlap(self) -> None:
        """Frames out of order, overlapping and repeated (Chrome's Initials) give the prefix up to
        the first hole, then all of it."""
        stream = CryptoStream()
        stream.add(6, b"ghi")
        stream.add(2, b"cdef")
        assert stream.contiguous() == b""
        stream.add(0, b"abc")
        assert stream.contiguous() == b"abcdefghi"
        stream.add(4, b"ef")
        stream.add(20, b"u")
        stream.add(9, b"jk")
        assert stream.contiguous() == b"abcdefghijk"

    def test_longer_frame_at_same_offset_kept(self) -> None:
        """Two pending frames at one offset: the longer one is kept."""
        stream = CryptoStream()
        stream.add(3, b"d")
        stream.add(3, b"defg")
        stream.add(0, b"abc")
        assert stream.contiguous() == b"abcdefg"

    def test_empty_frame(self) -> None:
        """An empty frame changes nothing."""
        stream = CryptoStream()
        stream.add(0, b"")
        stream.add(5, b"")
        assert stream.contiguous() == b""

    def test_bound(self) -> None:
        """Data past MAX_CLIENT_HELLO is malformed; up to it is fine."""
        stream = CryptoStream()
        stream.add(MAX_CLIENT_HELLO - 1, b"x")
        with pytest.raises(MalformedPacket):
            stream.add(MAX_CLIENT_HELLO - 1, b"xy")
        with pytest.raises(MalformedPacket):
            stream.add(-1, b"x")

    def test_too_fragmented(self) -> None:
        """More than MAX_PENDING frames waiting behind a hole is malformed (bounded memory)."""
        stream = CryptoStream()
        for i in range(CryptoStream.MAX_PENDING):
            stream.add(10 + 2 * i, b"x")
        with pytest.raises(MalformedPacket):
            stream.add(5000, b"x")

    @given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=60), st.randoms())
    def test_fuzz_reassembly(self, pieces: list[tuple[int, int]], rnd) -> None:  # type: ignore[no-untyped-def]
        """Any set of slices of a message, added in any order, gives exactly the message's prefix
        that the slices cover from 0."""
        message = bytes(range(256)) * 2
        covered = bytearray(len(message))
        stream = CryptoStream()
        rnd.shuffle(pieces)
        for offset, size in pieces:
            stream.add(offset, message[offset : offset + size])
            for i in range(offset, min(offset + size, len(message))):
                covered[i] = 1
        prefix = covered.find(0)
        prefix = len(message) if prefix < 0 else prefix
        assert stream.contiguous() == message[:prefix]


CORPUS_PAYLOADS = corpus_payloads


def quic_client_hello(name: str, key: tuple[str, int, str, int],
                      datagrams: int = 30) -> tuple[ClientHello | None, list[str]]:
    """Run one direction's first datagrams as the pipeline would: keys from the first Initial's
    DCID, CRYPTO frames reassembled across packets, until a ClientHello parses."""
    stream = CryptoStream()
    original: bytes | None = None
    errors = []
    for datagram in CORPUS_PAYLOADS.udp_datagrams(name, key)[:datagrams]:
        try:
            initials = parse_initials(datagram, original)
        except MalformedPacket as exc:
            errors.append(exc.detail)
            continue
        for initial in initials:
            if original is None:
                original = initial.dcid
            for offset, data in initial.crypto:
                stream.add(offset, data)
        if initials:
            hello = parse_client_hello(stream.contiguous())
            if hello is not None:
                return hello, errors
    return None, errors


# Expected names douane does not report: Google's QUIC before TLS (its CHLO is not a ClientHello).
GQUIC = {"Q050", "Q046", "Q043", "Q025"}


@pytest.mark.skipif(not CORPUS_PAYLOADS.CORPUS.is_dir(), reason="shared corpus not present")
class TestCorpus:
    def test_quic_sni(self) -> None:
        """The SNI of every corpus QUIC flow (v1, v2, drafts, mvfst, T051; ClientHellos over
        several Initials, out of order, after a DCID change) is nDPI's hostname; gQUIC is out."""
        cp = CORPUS_PAYLOADS
        records = cp.expected({"quic_sni"})
        results: Counter[str] = Counter()
        misses = []
        for rec in records:
            found = [quic_client_hello(rec["pcap"], key)[0] for key in cp.directions(rec)]
            names = [h.sni for h in found if h is not None]
            if rec["hostname"] in names:
                results[rec.get("quic_version") or "?"] += 1
                if rec.get("ech"):
                    assert any(h.ech for h in found if h is not None)
            else:
                misses.append(f"{rec['pcap']}#{rec['ndpi_flow_index']} ({rec.get('quic_version')}): "
                              f"want {rec['hostname']}, got {names}")
        matched = sum(results.values())
        print(f"quic_sni: {matched}/{len(records)} match by version {dict(results)}; misses: {misses}")
        assert len(records) >= 120
        assert all(m.split("(")[1].split(")")[0] in GQUIC for m in misses), misses

    def test_no_sni_captures(self) -> None:
        """Captures nDPI reports without a name (draft-34, v1 split over packets without SNI)
        raise nothing but MalformedPacket and give no name."""
        for name in ["quic-34.pcap", "quic-33.pcapng", "quic_frags_ch_in_multiple_packets.pcapng"]:
            _, udp = CORPUS_PAYLOADS._read(name)
            for key in udp:
                hello, _ = quic_client_hello(name, key)
                assert hello is None or hello.sni is None, (name, hello)

    @given(st.data())
    def test_fuzz_real_datagrams(self, data: st.DataObject) -> None:
        """Real client Initials, cut anywhere, one byte changed, random bytes after, keep the
        contract."""
        datagram = bytearray(data.draw(st.sampled_from(REAL_DATAGRAMS)))
        datagram[data.draw(st.integers(0, len(datagram) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(datagram)))
        outcome(bytes(datagram[:cut]) + data.draw(st.binary(max_size=32)))


def _real_datagrams() -> list[bytes]:
    """The first datagram of a few corpus QUIC flows' clients (several versions)."""
    if not CORPUS_PAYLOADS.CORPUS.is_dir():
        return [RFC9001_PACKET]
    out = []
    for rec in CORPUS_PAYLOADS.expected({"quic_sni"})[:12]:
        for key in CORPUS_PAYLOADS.directions(rec):
            for datagram in CORPUS_PAYLOADS.udp_datagrams(rec["pcap"], key)[:2]:
                if outcome(datagram):
                    out.append(datagram)
    return out or [RFC9001_PACKET]


REAL_DATAGRAMS = _real_datagrams()
