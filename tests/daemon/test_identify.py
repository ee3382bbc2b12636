"""Identification in the flow table: names from DNS answers, TLS SNI, HTTP Host; bounded inspection."""

from __future__ import annotations

import struct
from typing import Any

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from douane.daemon.config import IdentifyConfig
from douane.daemon.demo_capture import client_hello
from douane.daemon.flows import Flow, FlowConfig, FlowTable
from douane.daemon.identify import Identify, Stream
from douane.daemon.pipeline import Record, flow_record

CLIENT, CLIENT2, RESOLVER = "10.0.0.5", "10.0.0.6", "10.0.0.53"
SERVER = "198.51.100.7"
T0 = 1_764_324_000.0


def frame(ip: Packet, t: float) -> tuple[float, int, bytes, int]:
    data = bytes(Ether() / ip)
    return (t, 1, data, len(data))


def seg(src: str, dst: str, sport: int, dport: int, seq: int, payload: bytes = b"", flags: str = "PA",
        t: float = T0) -> tuple[float, int, bytes, int]:
    pkt = IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq)
    return frame(pkt / Raw(payload) if payload else pkt, t)


def dns_answer(client: str, name: str, address: str, t: float, ttl: int = 300, port: int = 53,
               qid: int = 7) -> list[tuple[float, int, bytes, int]]:
    query = DNS(id=qid, rd=1, qd=DNSQR(qname=name))
    reply = DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name),
                an=DNSRR(rrname=name, type="A", ttl=ttl, rdata=address))
    return [
        frame(IP(src=client, dst=RESOLVER) / UDP(sport=40000, dport=port) / query, t),
        frame(IP(src=RESOLVER, dst=client) / UDP(sport=port, dport=40000) / reply, t + 0.01),
    ]


class Run:
    def __init__(self, config: IdentifyConfig | None = None) -> None:
        self.records: list[Record] = []
        self.identify = Identify(config)
        self.payload_calls = 0
        inner = self.identify.on_payload

        def counting(*args: Any) -> None:
            self.payload_calls += 1
            inner(*args)

        self.identify.on_payload = counting  # type: ignore[method-assign]
        self.table = FlowTable(FlowConfig(), self._closed, lambda flow: None, self.identify)

    def _closed(self, flow: Flow) -> None:
        self.records.append(flow_record(flow))

    def feed(self, frames: list[tuple[float, int, bytes, int]]) -> Run:
        self.table.ingest(frames)
        self.table.flush()
        return self

    def to(self, dst: str, dport: int) -> Record:
        found = [r for r in self.records if r["dst"] == dst and r["dport"] == dport]
        assert len(found) == 1, self.records
        return found[0]


def handshake(
    cport: int, dport: int = 443, isn: int = 1000, t: float = T0
) -> list[tuple[float, int, bytes, int]]:
    return [
        seg(CLIENT, SERVER, cport, dport, isn, flags="S", t=t),
        seg(SERVER, CLIENT, dport, cport, 9000, flags="SA", t=t + 0.01),
        seg(CLIENT, SERVER, cport, dport, isn + 1, flags="A", t=t + 0.02),
    ]


class TestStream:
    def test_in_order_and_retransmission(self) -> None:
        """Segments in order append; a retransmitted overlap adds only its new bytes."""
        stream = Stream(1024, isn=100)
        assert stream.add(100, b"abc")
        assert stream.add(102, b"cdef")
        assert not stream.add(100, b"abc")
        assert bytes(stream.data) == b"abcdef"

    def test_out_of_order_is_held_then_joined(self) -> None:
        """A segment after a gap waits until the gap is filled."""
        stream = Stream(1024, isn=100)
        assert not stream.add(103, b"def")
        assert stream.add(100, b"abc")
        assert bytes(stream.data) == b"abcdef"

    def test_without_syn_an_earlier_segment_moves_the_start(self) -> None:
        """Without the SYN, a segment before the first one seen becomes the stream's start."""
        stream = Stream(1024)
        stream.add(200, b"world")
        stream.add(195, b"hello")
        assert bytes(stream.data) == b"helloworld"

    def test_with_syn_nothing_before_the_start(self) -> None:
        """With the SYN known, bytes before the stream's start are ignored."""
        stream = Stream(1024, isn=200)
        assert not stream.add(190, b"0123456789")
        assert bytes(stream.data) == b""

    def test_bounded(self) -> None:
        """The stream never holds more than its limit, nor segments far beyond it."""
        stream = Stream(8, isn=0)
        stream.add(0, b"x" * 100)
        stream.add(1_000_000, b"y" * 10)
        assert bytes(stream.data) == b"x" * 8
        assert stream.pending == {}


class TestTlsAndHttp:
    def test_sni_from_segments_out_of_order(self) -> None:
        """A ClientHello split in two segments that arrive in reverse order still gives its SNI."""
        hello = client_hello("hdh.blob.core.windows.net")
        first, second = hello[:40], hello[40:]
        frames = [*handshake(50000),
                  seg(CLIENT, SERVER, 50000, 443, 1001 + 40, second, t=T0 + 0.03),
                  seg(CLIENT, SERVER, 50000, 443, 1001, first, t=T0 + 0.04)]
        record = Run().feed(frames).to(SERVER, 443)
        assert (record["hostname"], record["hostname_source"]) == ("hdh.blob.core.windows.net", "tls_sni")
        assert record["ech"] is False

    def test_ech_marks_the_flow(self) -> None:
        """An Encrypted Client Hello gives the outer name and ech: true."""
        hello = bytearray(client_hello("public.example.com"))
        ech = struct.pack("!HH", 0xFE0D, 4) + b"\x00\x00\x01\x00"
        # Append the extension: fix the extensions, handshake and record lengths.
        hello += ech
        body_len = int.from_bytes(hello[6:9], "big") + len(ech)
        hello[6:9] = body_len.to_bytes(3, "big")
        hello[3:5] = (body_len + 4).to_bytes(2, "big")
        ext_at = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 4 + 2
        ext_len = int.from_bytes(hello[ext_at:ext_at + 2], "big") + len(ech)
        hello[ext_at:ext_at + 2] = ext_len.to_bytes(2, "big")
        frames = [*handshake(50001), seg(CLIENT, SERVER, 50001, 443, 1001, bytes(hello), t=T0 + 0.03)]
        record = Run().feed(frames).to(SERVER, 443)
        assert record["hostname"] == "public.example.com"
        assert record["ech"] is True

    def test_http_host_any_port(self) -> None:
        """The Host header of the first request names the flow, without its port, on any port."""
        request = b"GET /fhir/Patient HTTP/1.1\r\nHost: api.example.org:8080\r\nAccept: */*\r\n\r\n"
        frames = [*handshake(50002, 8080), seg(CLIENT, SERVER, 50002, 8080, 1001, request, t=T0 + 0.03)]
        record = Run().feed(frames).to(SERVER, 8080)
        assert (record["hostname"], record["hostname_source"]) == ("api.example.org", "http_host")

    def test_address_literal_host_is_no_name(self) -> None:
        """A Host that is an IP address leaves the flow unnamed (an address is not a name)."""
        request = b"GET / HTTP/1.1\r\nHost: 198.51.100.7\r\n\r\n"
        frames = [*handshake(50003, 80), seg(CLIENT, SERVER, 50003, 80, 1001, request, t=T0 + 0.03)]
        record = Run().feed(frames).to(SERVER, 80)
        assert record["hostname"] is None and record["hostname_source"] is None


class TestDns:
    def test_answer_names_a_later_flow(self) -> None:
        """An A answer to a client names that client's later flow to the address (source dns)."""
        frames = [*dns_answer(CLIENT, "files.example.net", SERVER, T0),
                  *handshake(50010, 443, t=T0 + 1)]
        run = Run().feed(frames)
        record = run.to(SERVER, 443)
        assert (record["hostname"], record["hostname_source"]) == ("files.example.net", "dns")
        resolver = run.to(RESOLVER, 53)
        assert (resolver["hostname"], resolver["hostname_source"]) == ("files.example.net", "dns_query")
        assert len(run.identify.dns_cache) >= 1

    def test_unanswered_query_names_its_flow(self) -> None:
        """A query that never gets an answer still names the flow to the resolver, at its end."""
        query = frame(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=40003, dport=53)
                      / DNS(id=5, rd=1, qd=DNSQR(qname="lost.example.net")), T0)
        record = Run().feed([query]).to(RESOLVER, 53)
        assert (record["hostname"], record["hostname_source"]) == ("lost.example.net", "dns_query")

    def test_sni_beats_dns(self) -> None:
        """TLS SNI takes precedence over the DNS answer's name."""
        frames = [*dns_answer(CLIENT, "cdn.example.net", SERVER, T0),
                  *handshake(50011, 443, t=T0 + 1),
                  seg(CLIENT, SERVER, 50011, 443, 1001, client_hello("app.example.org"), t=T0 + 1.1)]
        record = Run().feed(frames).to(SERVER, 443)
        assert (record["hostname"], record["hostname_source"]) == ("app.example.org", "tls_sni")

    def test_expired_answer_is_not_used(self) -> None:
        """An answer older than its (clamped) TTL names nothing."""
        frames = [*dns_answer(CLIENT, "old.example.net", SERVER, T0, ttl=30),
                  *handshake(50012, 443, t=T0 + 90_000)]
        record = Run().feed(frames).to(SERVER, 443)
        assert record["hostname"] is None

    def test_dns_on_another_port_needs_its_query(self) -> None:
        """On a non-DNS port, an answer counts only after the matching query on the same flow."""
        run = Run().feed([*dns_answer(CLIENT, "odd.example.net", SERVER, T0, port=5300),
                          *handshake(50013, 443, t=T0 + 1)])
        assert run.to(SERVER, 443)["hostname"] == "odd.example.net"
        reply = DNS(id=9, qr=1, qd=DNSQR(qname="forged.example.net"),
                    an=DNSRR(rrname="forged.example.net", type="A", ttl=300, rdata=SERVER))
        lone = [frame(IP(src=RESOLVER, dst=CLIENT2) / UDP(sport=5300, dport=40001) / reply, T0),
                seg(CLIENT2, SERVER, 50014, 443, 5, flags="S", t=T0 + 1)]
        run = Run().feed(lone)
        assert all(r["hostname"] != "forged.example.net" for r in run.records)

    def test_dns_over_tcp(self) -> None:
        """Answers carried over TCP (2-byte length prefix) feed the cache too."""
        reply = bytes(DNS(id=3, qr=1, qd=DNSQR(qname="tcp.example.net"),
                          an=DNSRR(rrname="tcp.example.net", type="A", ttl=300, rdata=SERVER)))
        frames = [
            seg(CLIENT, RESOLVER, 40100, 53, 500, flags="S", t=T0),
            seg(RESOLVER, CLIENT, 53, 40100, 7000, flags="SA", t=T0 + 0.01),
            seg(RESOLVER, CLIENT, 53, 40100, 7001, struct.pack("!H", len(reply)) + reply, t=T0 + 0.02),
            *handshake(50015, 443, t=T0 + 1),
        ]
        assert Run().feed(frames).to(SERVER, 443)["hostname"] == "tcp.example.net"


class TestBounds:
    def test_inspection_stops(self) -> None:
        """A flow whose payload names nothing is inspected for a few packets only, not for all."""
        frames = handshake(50020, 5000)
        frames += [seg(CLIENT, SERVER, 50020, 5000, 1001 + i * 100, bytes(100), t=T0 + 1 + i)
                   for i in range(60)]
        frames += [seg(SERVER, CLIENT, 5000, 50020, 9001 + i * 100, bytes(100), t=T0 + 1.5 + i)
                   for i in range(60)]
        run = Run(IdentifyConfig(payload_packets=5)).feed(frames)
        assert run.to(SERVER, 5000)["hostname"] is None
        assert run.payload_calls <= 2 * 5 + 1

    def test_garbage_payload_never_escapes(self) -> None:
        """Payloads that look like TLS, HTTP or DNS but are not are counted, never raised."""
        not_a_hello = bytearray(client_hello("x.example"))
        ext_at = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 4 + 2
        not_a_hello[ext_at + 4:ext_at + 6] = b"\xff\xf0"  # the first extension claims 65,520 bytes
        bad_http = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"  # two Hosts
        pointer_loop = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
        frames = [*handshake(50021), seg(CLIENT, SERVER, 50021, 443, 1001, bytes(not_a_hello), t=T0 + 0.1)]
        frames += handshake(50022, 80, t=T0 + 1)
        frames += [seg(CLIENT, SERVER, 50022, 80, 1001, bad_http, t=T0 + 1.1)]
        answer = IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=40002) / Raw(pointer_loop)
        frames += [frame(answer, T0 + 2)]
        run = Run().feed(frames)
        assert len(run.records) == 3
        assert run.identify.malformed == 3
        assert all(r["hostname"] is None for r in run.records)
