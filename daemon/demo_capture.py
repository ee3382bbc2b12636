"""Writes the demo capture shipped with douane (`daemon/data/demo.pcap`).

A morning on a small hospital's gateway, made with scapy so that anyone can read and remake it:
`python -m douane.daemon.demo_capture daemon/data/demo.pcap`. The addresses outside are real
providers' (so the embedded databases answer), the inside is RFC 1918, and every name, identifier
and payload is invented.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

START = 1_795_860_000.0  # 2026-11-28T10:00:00Z
GATEWAY_MAC = "02:00:00:00:00:01"
HOST_MAC = "02:00:00:00:00:02"


def client_hello(sni: str) -> bytes:
    """A TLS 1.3 ClientHello record (RFC 8446 section 4.1.2) carrying `sni` (RFC 6066 section 3)."""
    name = sni.encode("ascii")
    server_name = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    extensions = (
        struct.pack("!HH", 0x0000, len(server_name)) + server_name
        + struct.pack("!HHB", 0x002B, 3, 2) + b"\x03\x04"  # supported_versions: TLS 1.3
        + struct.pack("!HHH", 0x000A, 4, 2) + b"\x00\x1d"  # supported_groups: x25519
    )
    body = (
        b"\x03\x03" + bytes(range(32))  # legacy_version, random
        + b"\x20" + bytes(32)  # legacy_session_id
        + struct.pack("!H", 4) + b"\x13\x01\x13\x02"  # cipher_suites
        + b"\x01\x00"  # compression: null
        + struct.pack("!H", len(extensions)) + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def tcp_session(
    src: str, dst: str, sport: int, dport: int, t0: float, first_payload: bytes,
    upload: int, download: int, vlan: int | None = None, segment: int = 1400,
) -> list[Packet]:
    """A whole TCP connection: handshake, a first payload, bulk data both ways, FIN both ways."""
    ip = IPv6 if ":" in src else IP

    def frame(layer: Packet, t: float) -> Packet:
        eth = Ether(src=HOST_MAC, dst=GATEWAY_MAC)
        pkt = eth / Dot1Q(vlan=vlan) / layer if vlan is not None else eth / layer
        pkt.time = t
        return pkt

    out: list[Packet] = []
    t = t0
    seq_c, seq_s = 1000, 5000

    def c2s(flags: str, data: bytes = b"") -> None:
        nonlocal t, seq_c
        out.append(frame(ip(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                    seq=seq_c, ack=seq_s) / Raw(data), t))
        seq_c += len(data) + (1 if "S" in flags or "F" in flags else 0)
        t += 0.004

    def s2c(flags: str, data: bytes = b"") -> None:
        nonlocal t, seq_s
        out.append(frame(ip(src=dst, dst=src) / TCP(sport=dport, dport=sport, flags=flags,
                                                    seq=seq_s, ack=seq_c) / Raw(data), t))
        seq_s += len(data) + (1 if "S" in flags or "F" in flags else 0)
        t += 0.004

    c2s("S")
    s2c("SA")
    c2s("A")
    c2s("PA", first_payload)
    s2c("PA", bytes(200))
    while upload > 0:
        c2s("A", bytes(min(segment, upload)))
        upload -= segment
    while download > 0:
        s2c("A", bytes(min(segment, download)))
        download -= segment
    c2s("FA")
    s2c("FA")
    c2s("A")
    return out


def dns_exchange(client: str, resolver: str, name: str, answers: list[str], t: float) -> list[Packet]:
    query = DNS(id=0x1234, rd=1, qd=DNSQR(qname=name))
    rrs = [DNSRR(rrname=name, type="AAAA" if ":" in a else "A", ttl=300, rdata=a) for a in answers]
    reply = DNS(id=0x1234, qr=1, rd=1, ra=1, qd=DNSQR(qname=name), an=rrs)
    q = Ether(src=HOST_MAC, dst=GATEWAY_MAC) / IP(src=client, dst=resolver) / UDP(
        sport=53001, dport=53) / query
    r = Ether(src=GATEWAY_MAC, dst=HOST_MAC) / IP(src=resolver, dst=client) / UDP(
        sport=53, dport=53001) / reply
    q.time, r.time = t, t + 0.012
    return [q, r]


def dicom_associate_rq(calling: str, called: str) -> bytes:
    """A DICOM A-ASSOCIATE-RQ PDU (PS3.8 section 9.3.2): application context, one presentation
    context proposing CT Image Storage in Implicit VR Little Endian, and the maximum PDU length."""

    def item(kind: int, value: bytes) -> bytes:
        return bytes((kind, 0)) + struct.pack("!H", len(value)) + value

    context = item(0x10, b"1.2.840.10008.3.1.1.1")
    presentation = item(0x20, bytes((1, 0, 0, 0))  # presentation context id 1, reserved
                        + item(0x30, b"1.2.840.10008.5.1.4.1.1.2")  # abstract syntax: CT Image Storage
                        + item(0x40, b"1.2.840.10008.1.2"))  # transfer syntax: Implicit VR Little Endian
    user = item(0x50, item(0x51, struct.pack("!I", 16384)))  # maximum length received
    body = (
        struct.pack("!HH", 1, 0)  # protocol version 1, reserved
        + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
        + context + presentation + user
    )
    return b"\x01\x00" + struct.pack("!I", len(body)) + body


def demo_packets() -> list[Packet]:
    t = START
    packets: list[Packet] = []
    packets += dns_exchange("10.30.0.21", "1.1.1.1", "hdh.blob.core.windows.net",
                            ["20.199.120.7"], t)
    # The PACS pushes images to a cloud archive in Azure France Central.
    packets += tcp_session("10.20.0.15", "20.199.120.7", 50123, 443, t + 1,
                           client_hello("hdh.blob.core.windows.net"), 60_000, 4_000)
    packets += tcp_session("10.20.0.15", "20.199.120.7", 50124, 104, t + 3,
                           dicom_associate_rq("PACS_HOSP", "ARCHIVE"), 20_000, 1_000)
    # Office work: Google Workspace, an OVHcloud-hosted site, a Hetzner server over IPv6.
    packets += tcp_session("10.30.0.21", "142.250.179.110", 51000, 443, t + 5,
                           client_hello("docs.google.com"), 8_000, 30_000, vlan=30)
    packets += tcp_session("10.30.0.22", "51.178.64.10", 51001, 443, t + 6,
                           client_hello("www.example-ovh-site.fr"), 3_000, 12_000, vlan=30)
    packets += tcp_session("fd00:30::23", "2a01:4f8::1", 51002, 443, t + 8,
                           client_hello("mirror.example-hetzner.de"), 2_000, 40_000)
    # A partner's laboratory server in Alibaba Cloud, and a visitor reaching the hospital's site.
    packets += tcp_session("10.30.0.24", "47.74.0.10", 51003, 443, t + 9,
                           client_hello("lab.example-partner.com"), 5_000, 5_000)
    packets += tcp_session("203.0.113.50", "10.10.0.5", 40000, 443, t + 10,
                           client_hello("www.hopital.example"), 1_000, 9_000)
    packets.sort(key=lambda p: float(p.time))
    return packets


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m douane.daemon.demo_capture OUTPUT.pcap", file=sys.stderr)
        return 2
    wrpcap(str(Path(args[0])), demo_packets())
    return 0


if __name__ == "__main__":
    sys.exit(main())
