"""HTTP/1.x: the Host of a client's first request, from its stream's first bytes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import corpus_payloads
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.dissect import MalformedPacket
from douane.daemon.http import MAX_HEADERS, http_host, looks_like_http

DATA = Path(__file__).resolve().parent / "data"




GET = (b"GET /index.html HTTP/1.1\r\nHost: www.Example.org:8080\r\nUser-Agent: curl/8.5.0\r\n"
       b"Accept: */*\r\n\r\n")


def outcome(data: bytes) -> str | None:
    """http_host with only its three outcomes allowed (MalformedPacket is returned as None)."""
    try:
        host = http_host(data)
    except MalformedPacket as exc:
        assert exc.reason == "malformed"
        return None
    assert host is None or isinstance(host, str)
    return host


class TestLooksLikeHttp:
    @pytest.mark.parametrize("first", [
        GET, b"POST /x HTTP/1.0\r\n", b"PROPFIND / HTTP/1.1", b"CONNECT a:443 HTTP/1.1", b"G", b"GE",
        b"GET", b"OPTIONS", b"MKCALENDAR ",
    ])
    def test_requests(self, first: bytes) -> None:
        """A known method and a space, or a prefix of one, may start an HTTP request."""
        assert looks_like_http(first)

    @pytest.mark.parametrize("first", [
        b"", b"\x16\x03\x01\x02\x00", b"EHLO mail.example.org\r\n", b"USER anonymous\r\n",
        b"get / HTTP/1.1", b"GETX / HTTP/1.1", b"HTTP/1.1 200 OK\r\n", b"PRI * HTTP/2.0\r\n",
        b"SSH-2.0-OpenSSH_9.6", b"GET\t/ HTTP/1.1", b"X" * 40,
    ])
    def test_other_streams(self, first: bytes) -> None:
        """TLS, SMTP, FTP, responses, the HTTP/2 preface and lower-case methods are not requests."""
        assert not looks_like_http(first)


class TestHttpHost:
    def test_host_header(self) -> None:
        """The Host header's name, port removed, lower-cased."""
        assert http_host(GET) == "www.example.org"

    @pytest.mark.parametrize("request_", [
        b"GET / HTTP/1.1\r\nhOsT: a.example\r\n\r\n",
        b"GET / HTTP/1.0\nHost:a.example\n\n",  # bare LF (RFC 9112 2.2), no space after the colon
        b"GET / HTTP/1.1\r\nHost: \ta.example \t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example.\r\n\r\nbody",
        b"GET / HTTP/1.1\r\nX-Folded: one\r\n two\r\nHost: a.example\r\n\r\n",  # obs-fold
        b"PROPFIND /dav HTTP/1.1\r\nHost: a.example:80\r\nDepth: 1\r\n\r\n",
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",  # absolute form wins
        b"GET http://user:pw@a.example:8080/x HTTP/1.1\r\n\r\n",  # absolute form, no Host
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
    ])
    def test_forms(self, request_: bytes) -> None:
        """Header case, bare LF, whitespace, folding, absolute and authority forms all name a.example."""
        assert http_host(request_) == "a.example"

    @pytest.mark.parametrize("request_", [
        b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 without Host
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 45.58.148.2:8888\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:port\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xc3\xa9t\xc3\xa9.fr\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\x1b[31m\r\n\r\n",
    ])
    def test_no_usable_host(self, request_: bytes) -> None:
        """A complete request without a usable host name gives "": an answer, not "need more"."""
        assert http_host(request_) == ""

    def test_every_prefix_needs_more(self) -> None:
        """However the request is split into segments, each prefix asks for more bytes."""
        for i in range(len(GET) - 1):
            assert http_host(GET[:i]) is None, i
        assert http_host(GET) == "www.example.org"

    def test_headers_at_the_bound(self) -> None:
        """Headers just under 16 KiB are read; without an end within 16 KiB they are malformed."""
        pad = b"X-Pad: " + b"a" * (MAX_HEADERS - 200) + b"\r\n"
        assert http_host(b"GET / HTTP/1.1\r\n" + pad + b"Host: a.example\r\n\r\n") == "a.example"
        endless = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_HEADERS
        assert http_host(endless[: MAX_HEADERS - 1]) is None
        with pytest.raises(MalformedPacket):
            http_host(endless)

    @pytest.mark.parametrize(("stream", "why"), [
        (b"HTTP/1.1 200 OK\r\n\r\n", "a response"),
        (b"\x16\x03\x01\x02\x00\x01", "TLS"),
        (b"GET / HTTP/2.0\r\n\r\n", "HTTP/2 request line"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "the HTTP/2 preface"),
        (b"GET /\r\n\r\n", "HTTP/0.9"),
        (b"GET / HTTP/1.1\r\nHost a.example\r\n\r\n", "a header line without a colon"),
        (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "a field name with a space"),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", "two Host headers"),
        (b"BREW /pot HTTP/1.1\r\nHost: a.example\r\n\r\n", "an unknown method"),
        (b"EHLO mail.example\r\n", "SMTP, still incomplete"),
    ])
    def test_malformed(self, stream: bytes, why: str) -> None:
        """Streams that are not an HTTP/1.x request, or an ambiguous one, are malformed."""
        with pytest.raises(MalformedPacket):
            http_host(stream)

    @given(st.binary(max_size=400))
    @example(b"GET / HTTP/1.1\r\nHost: a\r\n\n\r\n")
    @example(b"GET \x00 HTTP/1.1\n\n")
    def test_fuzz_random(self, data: bytes) -> None:
        """Random bytes give a string, None or MalformedPacket, nothing else."""
        outcome(data)

    @given(st.integers(0, len(GET) - 1), st.integers(0, 255), st.integers(0, len(GET)),
           st.binary(max_size=64))
    @example(26, 0x0A, len(GET), b"")  # a newline inside the Host value
    @example(24, 0x00, len(GET), b"")  # a NUL inside the Host value
    def test_fuzz_mutated(self, pos: int, value: int, cut: int, tail: bytes) -> None:
        """A real request with one byte changed, cut and extended keeps the contract, and a host
        that comes out is a clean name or ""."""
        data = bytearray(GET)
        data[pos] = value
        host = outcome(bytes(data[:cut]) + tail)
        if host:
            assert all(c.isascii() and (c.isalnum() or c in ".-_") for c in host), host

    @given(st.text(max_size=80))
    def test_fuzz_host_values(self, value: str) -> None:
        """Whatever the Host value, what comes out is a clean lower-case name or ""."""
        raw = value.encode("utf-8", "surrogatepass")
        host = outcome(b"GET / HTTP/1.1\r\nHost: " + raw + b"\r\n\r\n")
        if host:
            assert host == host.lower() and all(c.isalnum() or c in ".-_" for c in host), host
            assert host.isascii()


CORPUS_PAYLOADS = corpus_payloads

# Expected names douane deliberately does not report: nDPI prints the Host header's address
# literal, which clean_hostname refuses (an address is not a hostname).
ADDRESS_LITERALS = {"45.58.148.2", "104.156.149.6", "192.168.88.231"}


@pytest.mark.skipif(not CORPUS_PAYLOADS.CORPUS.is_dir(), reason="shared corpus not present")
class TestCorpus:
    def test_http_host(self) -> None:
        """The Host of every corpus HTTP flow is nDPI's hostname (split header lines, proxies,
        WebDAV, non-standard ports), except address literals, which give ""."""
        cp = CORPUS_PAYLOADS
        records = cp.expected({"http_host"})
        results: Counter[str] = Counter()
        misses = []
        for rec in records:
            found = []
            for key in cp.directions(rec):
                stream = cp.tcp_stream(rec["pcap"], key)
                if looks_like_http(stream):
                    host = http_host(stream)
                    if host is not None:
                        found.append(host)
            if rec["hostname"] in found:
                results["match"] += 1
            elif rec["hostname"] in ADDRESS_LITERALS and found == [""]:
                results["address literal"] += 1
                misses.append(f"{rec['pcap']}#{rec['ndpi_flow_index']}: Host is the address "
                              f"literal {rec['hostname']} (by design)")
            else:
                misses.append(f"{rec['pcap']}#{rec['ndpi_flow_index']}: want {rec['hostname']}, "
                              f"got {found}")
        print(f"http_host: {results['match']}/{len(records)} match; misses: {misses}")
        assert len(records) >= 30
        assert results["match"] + results["address literal"] == len(records)
