"""TLS ClientHello parsing: SNI, ECH, ALPN and version, from handshake bytes and from TCP streams.

Hand-built ClientHellos are written field by field with struct (`client_hello` below); the RFC 9001
Appendix A ClientHello is a real one; the corpus test runs the shared captures' TCP streams.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import corpus_payloads
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.dissect import MalformedPacket
from douane.daemon.tls import (
    MAX_CLIENT_HELLO,
    ClientHello,
    looks_like_tls,
    parse_client_hello,
    parse_tls_stream,
)

DATA = Path(__file__).resolve().parent / "data"




# RFC 9001 Appendix A.2: the ClientHello inside the client Initial's CRYPTO frame (241 bytes).
RFC9001_CLIENT_HELLO = bytes.fromhex(
    "010000ed"  # Handshake: client_hello, length 0xed = 237
    "0303"  # legacy_version TLS 1.2
    "ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47f06a2b69484c"  # random
    "00"  # legacy_session_id: empty
    "0004" "13011302"  # cipher_suites: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384
    "0100"  # legacy_compression_methods: null
    "00c0"  # extensions: 192 bytes
    "0000" "0010" "000e" "00" "000b" "6578616d706c652e636f6d"  # server_name: host_name example.com
    "ff01" "0001" "00"  # renegotiation_info
    "000a" "0008" "0006001d00170018"  # supported_groups
    "0010" "0007" "0005" "04616c706e"  # ALPN: "alpn"
    "0005" "0005" "0100000000"  # status_request
    "0033" "0026" "0024001d00209370b2c9caa47fbabaf4559fedba753de171fa71f50f1ce15d43e994ec74d748"
    "002b" "0003" "020304"  # supported_versions: TLS 1.3
    "000d" "0010" "000e0403050306030203080408050806"  # signature_algorithms
    "002d" "0002" "0101"  # psk_key_exchange_modes
    "001c" "0002" "4001"  # record_size_limit
    "0039" "0032" "0408ffffffffffffffff05048000ffff07048000ffff0801100104800075300901100f088394c8"
    "f03e51570806048000ffff"  # quic_transport_parameters
)


def ext(ext_type: int, body: bytes) -> bytes:
    """One extension: type (u16), length (u16), data."""
    return struct.pack("!HH", ext_type, len(body)) + body


def sni_ext(name: bytes, name_type: int = 0) -> bytes:
    """server_name (RFC 6066 3): list length, then name_type (u8), host_name length (u16), name."""
    entry = struct.pack("!BH", name_type, len(name)) + name
    return ext(0, struct.pack("!H", len(entry)) + entry)


def alpn_ext(*names: bytes) -> bytes:
    """ALPN (RFC 7301 3.1): list length (u16), then each name with a u8 length."""
    body = b"".join(bytes([len(n)]) + n for n in names)
    return ext(16, struct.pack("!H", len(body)) + body)


def versions_ext(*versions: int) -> bytes:
    """supported_versions (RFC 8446 4.2.1): u8 length, then u16 versions."""
    return ext(43, bytes([2 * len(versions)]) + b"".join(struct.pack("!H", v) for v in versions))


def client_hello(extensions: bytes | None = b"", legacy_version: int = 0x0303,
                 session_id: bytes = b"\x11" * 32, suites: bytes = b"\x13\x01\xc0\x2f") -> bytes:
    """A ClientHello handshake message; `extensions=None` leaves the block out (TLS 1.0-1.2)."""
    body = struct.pack("!H", legacy_version) + b"\x42" * 32  # version, random
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += b"\x01\x00"  # one compression method: null
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(handshake: bytes, size: int = 16384, version: int = 0x0301) -> bytes:
    """The handshake bytes cut into handshake records (type 22) of at most `size` bytes."""
    out = b""
    for i in range(0, len(handshake), size):
        chunk = handshake[i : i + size]
        out += struct.pack("!BHH", 22, version, len(chunk)) + chunk
    return out


TYPICAL = client_hello(sni_ext(b"hdh.blob.core.windows.net") + alpn_ext(b"h2", b"http/1.1")
                       + versions_ext(0x3A3A, 0x0304, 0x0303) + ext(0xFE0D, b"\x00" * 200))


def outcome(fn, data: bytes) -> ClientHello | None:  # type: ignore[no-untyped-def]
    """Call a parser; only its three outcomes may happen (MalformedPacket is returned as None)."""
    try:
        result = fn(data)
    except MalformedPacket as exc:
        assert exc.reason == "malformed"
        return None
    assert result is None or isinstance(result, ClientHello)
    return result


class TestLooksLikeTls:
    @pytest.mark.parametrize("first", [
        records(TYPICAL), b"\x16", b"\x16\x03", b"\x16\x03\x01", b"\x16\x03\x00\x00\x10",
        b"\x16\x03\x04\x00\x10\x01",
    ])
    def test_handshake_records(self, first: bytes) -> None:
        """A handshake record header of version 3.0-3.4, or a prefix of one, may be TLS."""
        assert looks_like_tls(first)

    @pytest.mark.parametrize("first", [
        b"", b"GET / HTTP/1.1\r\n", b"\x17\x03\x03\x00\x10", b"\x16\x02\x00", b"\x16\x03\x05",
        b"\x16\x03\x01\x00\x10\x02", b"SSH-2.0-OpenSSH", b"\x80\x2e\x01\x00\x02",  # SSLv2 hello
    ])
    def test_other_streams(self, first: bytes) -> None:
        """Application data, HTTP, SSH, SSLv2 and a ServerHello are not a client's TLS start."""
        assert not looks_like_tls(first)


class TestParseClientHello:
    def test_rfc9001_client_hello(self) -> None:
        """The RFC 9001 Appendix A ClientHello names example.com, offers "alpn" and TLS 1.3."""
        assert parse_client_hello(RFC9001_CLIENT_HELLO) == ClientHello("example.com", False, ("alpn",),
                                                                       0x0304)

    def test_fields(self) -> None:
        """SNI, ALPN in order, ECH and the highest non-GREASE supported version are read."""
        hello = parse_client_hello(TYPICAL)
        assert hello == ClientHello("hdh.blob.core.windows.net", True, ("h2", "http/1.1"), 0x0304)

    def test_trailing_bytes_ignored(self) -> None:
        """Bytes after the ClientHello message (another handshake message) are not read."""
        assert parse_client_hello(TYPICAL + b"\x0b\x00\x00\x00") == parse_client_hello(TYPICAL)

    def test_tls12_without_extensions(self) -> None:
        """A TLS 1.0-1.2 ClientHello may carry no extensions block at all (RFC 5246 7.4.1.2)."""
        assert parse_client_hello(client_hello(None, 0x0301)) == ClientHello(None, False, (), 0x0301)

    def test_no_server_name(self) -> None:
        """Without server_name, sni is None and the version is legacy_version."""
        assert parse_client_hello(client_hello(alpn_ext(b"h2"))) == ClientHello(None, False, ("h2",), 0x0303)

    @pytest.mark.parametrize("name", [b"bad name.com", b"evil.com\x00.example", b"10.0.0.1", b"\xff.com",
                                      b"a" * 300, b"*.example.com"])
    def test_invalid_server_name(self, name: bytes) -> None:
        """A server_name that is not a clean hostname gives sni None, never the raw bytes."""
        hello = parse_client_hello(client_hello(sni_ext(name)))
        assert hello is not None and hello.sni is None

    def test_sni_is_lowercased(self) -> None:
        """The name is cleaned: lower-cased, trailing dot removed."""
        hello = parse_client_hello(client_hello(sni_ext(b"WWW.Example.COM.")))
        assert hello is not None and hello.sni == "www.example.com"

    def test_first_host_name_wins(self) -> None:
        """A list with an unknown name type first, then two host names: the first host name."""
        entries = b"".join(struct.pack("!BH", t, len(n)) + n for t, n in
                           [(7, b"x"), (0, b"first.example"), (0, b"second.example")])
        hello = parse_client_hello(client_hello(ext(0, struct.pack("!H", len(entries)) + entries)))
        assert hello is not None and hello.sni == "first.example"

    def test_alpn_unprintable_dropped(self) -> None:
        """ALPN names with bytes unfit for logs are dropped, printable ones kept."""
        hello = parse_client_hello(client_hello(alpn_ext(b"\x0a\x0a", b"h2", b"a b", b"h3")))
        assert hello is not None and hello.alpn == ("h2", "h3")

    def test_only_grease_versions(self) -> None:
        """supported_versions with only GREASE values falls back to legacy_version."""
        hello = parse_client_hello(client_hello(versions_ext(0x0A0A, 0xFAFA)))
        assert hello is not None and hello.version == 0x0303

    def test_every_prefix_needs_more(self) -> None:
        """Each strict prefix of a ClientHello asks for more bytes; the whole one parses."""
        for i in range(len(TYPICAL)):
            assert parse_client_hello(TYPICAL[:i]) is None, i
        assert parse_client_hello(TYPICAL) is not None

    @pytest.mark.parametrize(("data", "why"), [
        (b"\x02\x00\x00\x04\x03\x03\x00\x00", "a ServerHello"),
        (b"\x01" + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big"), "longer than the bound"),
        (b"\x01\xff\xff\xff", "2^24-1 bytes announced"),
        (client_hello(sni_ext(b"a.example") + sni_ext(b"b.example")), "two server_name extensions"),
        (client_hello(b"", session_id=b"\x00" * 33), "session id over 32 bytes"),
        (client_hello(b"", suites=b""), "no cipher suite"),
        (client_hello(b"", suites=b"\x13\x01\x13"), "odd cipher suites length"),
        (client_hello(b"", legacy_version=0x0200), "SSL 2 version"),
        (client_hello(ext(0, b"\x00\x10\x00")), "server name list past its extension"),
        (client_hello(ext(0, b"\x00\x03\x00\x00\x05ab")), "host name past its list"),
        (client_hello(ext(16, b"\x00\x02\x00\x00")), "empty ALPN name"),
        (client_hello(ext(43, b"\x03\x03\x04\x03")), "odd supported_versions length"),
        (client_hello(b"\x00\x00\x00\x10"), "extension past the block"),
    ])
    def test_malformed(self, data: bytes, why: str) -> None:
        """Wrong message type, lengths past their bounds or structures, duplicates are malformed."""
        with pytest.raises(MalformedPacket) as info:
            parse_client_hello(data)
        assert info.value.reason == "malformed", why

    def test_extensions_length_mismatch(self) -> None:
        """An extensions block whose length disagrees with the message is malformed."""
        good = client_hello(sni_ext(b"a.example"))
        body = bytearray(good)
        body[4 + 2 + 32 + 1 + 32 + 2 + 4 + 2 : 4 + 2 + 32 + 1 + 32 + 2 + 4 + 4] = b"\x00\x01"
        with pytest.raises(MalformedPacket):
            parse_client_hello(bytes(body))

    @given(st.binary(max_size=600))
    def test_fuzz_random(self, data: bytes) -> None:
        """Random bytes give a ClientHello, None or MalformedPacket, nothing else."""
        outcome(parse_client_hello, data)

    @given(st.integers(0, len(TYPICAL) - 1), st.integers(0, 255), st.integers(0, len(TYPICAL)),
           st.binary(max_size=64))
    @example(3, 0xFF, len(TYPICAL), b"")  # length byte raised: need more, never an error
    @example(44, 0xFF, len(TYPICAL), b"")  # cipher suites length past the message
    def test_fuzz_mutated(self, pos: int, value: int, cut: int, tail: bytes) -> None:
        """A real ClientHello with one byte changed, cut and extended keeps the contract; its SNI,
        if any, is a clean name."""
        data = bytearray(TYPICAL)
        data[pos] = value
        hello = outcome(parse_client_hello, bytes(data[:cut]) + tail)
        if hello is not None and hello.sni is not None:
            assert hello.sni.replace(".", "").replace("-", "").replace("_", "").isalnum()


class TestNamesOnly:
    """Identification's parse reads server_name and ECH only: the same names, less work."""

    def test_same_names(self) -> None:
        """SNI and ECH as the full parse gives them; ALPN and version are not read."""
        assert parse_client_hello(TYPICAL, names_only=True) == ClientHello(
            "hdh.blob.core.windows.net", True, (), 0)
        assert parse_tls_stream(records(TYPICAL, 100), names_only=True) == ClientHello(
            "hdh.blob.core.windows.net", True, (), 0)

    def test_unread_extensions_unchecked(self) -> None:
        """A broken ALPN or supported_versions does not hide the server name."""
        broken = client_hello(sni_ext(b"dpi.example") + ext(16, b"\x00\x02\x00\x00") + ext(43, b"\x03"))
        with pytest.raises(MalformedPacket):
            parse_client_hello(broken)
        hello = parse_client_hello(broken, names_only=True)
        assert hello is not None and hello.sni == "dpi.example"

    def test_duplicate_server_name_still_refused(self) -> None:
        """The extensions it reads are still refused twice (RFC 8446 4.2)."""
        with pytest.raises(MalformedPacket):
            parse_client_hello(client_hello(sni_ext(b"a.example") + sni_ext(b"b.example")), names_only=True)

    @given(st.integers(0, len(TYPICAL) - 1), st.integers(0, 255), st.integers(0, len(TYPICAL)),
           st.binary(max_size=64))
    def test_fuzz_agrees_with_full_parse(self, pos: int, value: int, cut: int, tail: bytes) -> None:
        """Wherever the full parse gives a ClientHello, names_only gives its SNI and ECH."""
        data = bytearray(TYPICAL)
        data[pos] = value
        mutated = bytes(data[:cut]) + tail
        full = outcome(parse_client_hello, mutated)
        names = outcome(lambda d: parse_client_hello(d, names_only=True), mutated)
        if full is not None:
            assert names is not None and (names.sni, names.ech) == (full.sni, full.ech)


class TestParseTlsStream:
    def test_single_record(self) -> None:
        """One record carrying the whole ClientHello."""
        assert parse_tls_stream(records(TYPICAL)) == parse_client_hello(TYPICAL)

    @pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 17, 100, 255])
    def test_fragmented_records(self, size: int) -> None:
        """A ClientHello fragmented over many records (RFC 8446 5.1), even 1-byte ones."""
        assert parse_tls_stream(records(TYPICAL, size)) == parse_client_hello(TYPICAL)

    @pytest.mark.parametrize("version", [0x0300, 0x0301, 0x0302, 0x0303, 0x0304])
    def test_record_versions(self, version: int) -> None:
        """Record versions SSL 3.0 to TLS 1.3 are accepted."""
        assert parse_tls_stream(records(TYPICAL, version=version)) is not None

    def test_every_prefix_needs_more(self) -> None:
        """However the stream is cut into TCP segments, each prefix asks for more bytes."""
        stream = records(TYPICAL, 300)
        for i in range(len(stream)):
            assert parse_tls_stream(stream[:i]) is None, i
        assert parse_tls_stream(stream) is not None

    def test_data_after_hello(self) -> None:
        """Records after the ClientHello's (a ChangeCipherSpec, early data) are not read."""
        stream = records(TYPICAL) + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x05hello"
        assert parse_tls_stream(stream) == parse_client_hello(TYPICAL)

    def test_huge_client_hello(self) -> None:
        """A 20 KiB ClientHello (post-quantum key shares, padding) spans two full records."""
        big = client_hello(sni_ext(b"big.example") + ext(21, b"\x00" * 20_000))
        assert len(big) > 16384
        hello = parse_tls_stream(records(big))
        assert hello is not None and hello.sni == "big.example"

    @pytest.mark.parametrize(("stream", "why"), [
        (b"\x17\x03\x03\x00\x05hello", "application data"),
        (b"\x15\x03\x03\x00\x02\x02\x28", "an alert"),
        (b"\x16\x03\x05\x00\x05", "record version 3.5"),
        (b"\x16\x02\x00\x00\x05", "record version 2.0"),
        (b"\x16\x03\x01\x00\x00", "an empty handshake record"),
        (b"\x16\x03\x01\x40\x01", "a record longer than 2^14"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x46", "a ServerHello"),
        (records(TYPICAL[:10]) + b"\x17\x03\x03\x00\x01\x00", "another record type mid-hello"),
        (records(b"\x01" + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big")), "a ClientHello past the bound"),
        (b"GET / HTTP/1.1\r\n", "HTTP"),
    ])
    def test_malformed(self, stream: bytes, why: str) -> None:
        """Streams that are not a client's TLS handshake are malformed, as early as possible."""
        with pytest.raises(MalformedPacket):
            parse_tls_stream(stream)

    @given(st.binary(max_size=600))
    @example(b"\x16\x03\x01\x00\x01\x01")
    @example(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00")
    def test_fuzz_random(self, data: bytes) -> None:
        """Random bytes give a ClientHello, None or MalformedPacket, nothing else."""
        outcome(parse_tls_stream, data)

    @given(st.integers(1, 40), st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 2000),
           st.binary(max_size=32))
    @example(1, 5, 0xFF, 2000, b"")
    def test_fuzz_mutated_records(self, size: int, pos: int, value: int, cut: int, tail: bytes) -> None:
        """Fragmented real records, one byte changed, cut and extended, keep the contract."""
        data = bytearray(records(TYPICAL, size))
        data[pos % len(data)] = value
        outcome(parse_tls_stream, bytes(data[:cut]) + tail)


CORPUS_PAYLOADS = corpus_payloads


@pytest.mark.skipif(not CORPUS_PAYLOADS.CORPUS.is_dir(), reason="shared corpus not present")
class TestCorpus:
    def test_tls_sni(self) -> None:
        """The SNI of every corpus TLS flow is nDPI's hostname, from the client's TCP stream
        (ClientHellos split over TCP segments, ECH outer names, IPv6, non-standard ports)."""
        cp = CORPUS_PAYLOADS
        records_ = cp.expected({"tls_sni"})
        misses = []
        results: Counter[str] = Counter()
        for rec in records_:
            found = []
            for key in cp.directions(rec):
                stream = cp.tcp_stream(rec["pcap"], key)
                if stream and looks_like_tls(stream):
                    hello = parse_tls_stream(stream)
                    if hello is not None:
                        found.append(hello)
            if any(h.sni == rec["hostname"] for h in found):
                results["match"] += 1
                if rec.get("ech"):
                    assert any(h.ech for h in found), rec["pcap"]
            else:
                misses.append(f"{rec['pcap']}#{rec['ndpi_flow_index']}: want {rec['hostname']}, "
                              f"got {[h.sni for h in found]}")
        print(f"tls_sni: {results['match']}/{len(records_)} match; misses: {misses}")
        assert len(records_) >= 50
        assert not misses

    def test_no_sni_captures(self) -> None:
        """Captures nDPI reports without SNI (huge ClientHello, missing fragment) give no name and
        raise nothing but MalformedPacket."""
        cp = CORPUS_PAYLOADS
        for name in ["tls_with_huge_ch.pcapng", "tls_missing_ch_frag.pcap", "encrypted_sni.pcap"]:
            tcp, _ = cp._read(name)
            for key in tcp:
                stream = cp.tcp_stream(name, key)
                hello = outcome(parse_tls_stream, stream)
                assert hello is None or hello.sni is None

    def test_corpus_prefixes(self) -> None:
        """Every prefix of the corpus client streams asks for more bytes, then gives the hello."""
        for stream in REAL_STREAMS:
            for i in range(len(stream)):
                assert parse_tls_stream(stream[:i]) is None
            assert parse_tls_stream(stream) is not None

    @given(st.data())
    def test_fuzz_real_prefixes(self, data: st.DataObject) -> None:
        """A real client stream, cut anywhere, one byte changed, random bytes after, keeps the
        contract."""
        stream = bytearray(data.draw(st.sampled_from(REAL_STREAMS)))
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(stream)))
        outcome(parse_tls_stream, bytes(stream[:cut]) + data.draw(st.binary(max_size=64)))


def _real_streams() -> list[bytes]:
    """The client streams of a few corpus TLS flows, up to the end of their ClientHello."""
    if not CORPUS_PAYLOADS.CORPUS.is_dir():
        return []
    out = []
    for rec in CORPUS_PAYLOADS.expected({"tls_sni"})[::6]:
        for key in CORPUS_PAYLOADS.directions(rec):
            stream = CORPUS_PAYLOADS.tcp_stream(rec["pcap"], key)
            if looks_like_tls(stream) and outcome(parse_tls_stream, stream) is not None:
                # Trim to the ClientHello's own records: the shortest prefix that parses.
                end = 0
                while parse_tls_stream(stream[:end]) is None:
                    end += 5 + int.from_bytes(stream[end + 3 : end + 5], "big")
                out.append(stream[:end])
    return out


REAL_STREAMS = _real_streams()
