"""Malformed input: bad packets are counted by reason and skipped; bad files end with a clear message.

Packet cases run through a FlowTable between two good packets of one flow, which must still count
both. File cases run the real command line in a subprocess and check its exit status and stderr.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
A, B = "10.0.0.5", "198.51.100.7"
A6, B6 = "fd00::5", "2001:db8::7"


def frame(pkt) -> bytes:
    return bytes(Ether(**MAC) / pkt)


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    """The frame with `value` written at `offset` (checksums are not checked by douane)."""
    return data[:offset] + value + data[offset + len(value):]


GOOD = frame(IP(src=A, dst=B) / UDP(sport=5000, dport=53) / Raw(b"q" * 12))  # 40 IP-layer bytes
TCP4 = frame(IP(src=A, dst=B) / TCP(sport=40000, dport=443, flags="S"))
UDP6 = frame(IPv6(src=A6, dst=B6) / UDP(sport=5000, dport=53) / Raw(b"q" * 12))
# Offsets in an Ethernet frame: IPv4 header at 14 (ihl nibble 14, total length 16-17), TCP at 34
# (data offset nibble 46); IPv6 header at 14 (payload length 18-19, next header 20), payload at 54.

# (id, frame bytes, length on the wire, reason counted, detail counted)
BAD_FRAMES = [
    ("ethernet-cut", GOOD[:10], 10, "truncated", "ethernet header"),
    ("ipv4-header-cut", GOOD[:14 + 12], 64, "truncated", "ipv4 header"),
    ("ipv4-ihl-below-5", patch(GOOD, 14, b"\x44"), len(GOOD), "malformed", "ipv4 header length"),
    ("ipv4-options-cut", patch(GOOD, 14, b"\x4f")[:40], 40, "truncated", "ipv4 options"),
    ("ipv4-total-beyond-frame", patch(GOOD, 16, struct.pack("!H", 200)), len(GOOD), "malformed",
     "ipv4 total length"),
    ("ipv4-total-below-ihl", patch(GOOD, 16, struct.pack("!H", 12)), len(GOOD), "malformed",
     "ipv4 total length"),
    ("ipv4-version-6-in-ipv4-ethertype", patch(GOOD, 14, b"\x65"), len(GOOD), "malformed",
     "ipv4 version"),
    ("ipv6-header-cut", UDP6[:14 + 30], 100, "truncated", "ipv6 header"),
    ("ipv6-payload-beyond-frame", patch(UDP6, 18, struct.pack("!H", 400)), len(UDP6), "malformed",
     "ipv6 payload length"),
    ("tcp-header-cut", TCP4[:34 + 10], len(TCP4), "truncated", "tcp header"),
    ("tcp-data-offset-below-5", patch(TCP4, 46, b"\x40"), len(TCP4), "malformed", "tcp data offset"),
    ("udp-ports-cut", GOOD[:34 + 2], len(GOOD), "truncated", "transport ports"),
]


def ext_chain_past_end() -> bytes:
    """IPv6 + hop-by-hop whose length field (6 -> 56 bytes) runs past the 8-byte payload."""
    data = frame(IPv6(src=A6, dst=B6, nh=0) / IPv6ExtHdrHopByHop(nh=59))
    return patch(data, 54 + 1, b"\x06")


def ext_chain_cut() -> bytes:
    """IPv6 announcing a hop-by-hop header, captured without it (snapped at the IPv6 header)."""
    data = frame(IPv6(src=A6, dst=B6, nh=0) / IPv6ExtHdrHopByHop(nh=17) / UDP(sport=1, dport=2))
    return data[:54]


def ext_chain_too_long() -> bytes:
    """IPv6 with 17 destination-options headers: more than douane walks."""
    ext = b"".join(bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00" for _ in range(16)) + bytes(
        [59, 0]) + b"\x01\x04\x00\x00\x00\x00"
    ip = IPv6(src=A6, dst=B6, nh=60, plen=len(ext))
    return frame(ip) + ext


BAD_FRAMES += [
    ("ipv6-ext-past-end", ext_chain_past_end(), len(ext_chain_past_end()), "malformed",
     "ipv6 extension header length"),
    ("ipv6-ext-cut", ext_chain_cut(), len(ext_chain_cut()) + 16, "truncated", "ipv6 extension header"),
    ("ipv6-ext-too-many", ext_chain_too_long(), len(ext_chain_too_long()), "malformed",
     "ipv6 extension header chain too long"),
]


class TestMalformedPackets:
    """Malformed or truncated frames are counted by reason and detail, and skipped."""

    @pytest.mark.parametrize(
        ("bad", "wirelen", "reason", "detail"),
        [pytest.param(*case[1:], id=case[0]) for case in BAD_FRAMES],
    )
    def test_counted_and_skipped(self, run_flows, net, bad, wirelen, reason, detail):
        """The bad frame is counted under its reason and the good packets around it still count."""
        frames = [
            (net.T0, 1, GOOD, len(GOOD)),
            (net.T0 + 0.1, 1, bad, wirelen),
            (net.T0 + 0.2, 1, GOOD, len(GOOD)),
        ]
        run = run_flows(frames)
        stats = run.table.stats
        assert stats.dropped == {"malformed": 0, "truncated": 0} | {reason: 1}
        assert stats.malformed_detail == {detail: 1}
        assert stats.packets == 3
        rec = run.only()
        assert (rec["packets_out"], rec["bytes_out"]) == (2, 80)

    def test_non_ip_frame_is_ignored_not_dropped(self, run_flows, net):
        """An ARP frame is ignored (not an error) and creates no flow."""
        arp = bytes(Ether(**MAC) / ARP())
        run = run_flows([(net.T0, 1, arp, len(arp)), (net.T0, 1, GOOD, len(GOOD))])
        assert run.table.stats.ignored == 1
        assert sum(run.table.stats.dropped.values()) == 0
        assert len(run.records) == 1

    def test_unknown_link_type_is_ignored(self, run_flows, net):
        """A frame of a link type douane does not know is ignored."""
        run = run_flows([(net.T0, 147, GOOD, len(GOOD))])
        assert run.table.stats.ignored == 1
        assert run.records == []

    @pytest.mark.parametrize("tagged", [False, True], ids=["fast-path", "vlan-general-path"])
    def test_tcp_header_beyond_ip_length(self, run_flows, net, tagged):
        """A TCP header that does not fit in the IP total length is malformed, not read from padding."""
        # IPv4 total length 28: the 20-byte IP header and 8 bytes, too few for TCP's 20; the bytes
        # after the IP packet (padding, here) look like the rest of a SYN (data offset 5, flags 0x02).
        ip = IP(src=A, dst=B, len=28) / TCP(sport=40000, dport=443, flags="S")
        data = bytes(Ether(**MAC) / Dot1Q(vlan=5) / ip) if tagged else frame(ip)
        run = run_flows([(net.T0, 1, data, len(data))])
        assert run.table.stats.dropped["malformed"] == 1
        assert run.records == []

    def test_wire_length_below_captured_length(self, run_flows, net):
        """A record whose wire length is below its captured length never gives negative byte counts."""
        tso = frame(IP(src=A, dst=B, len=0) / TCP(sport=40000, dport=443, flags="S"))
        run = run_flows([(net.T0, 1, tso, 0)])
        assert [(r["packets_out"], r["bytes_out"]) for r in run.records] == [(1, 40)]


# --- files, through the real command line -----------------------------------------------------------


def replay(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "douane.daemon.cli", "replay", str(path), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def pcapng_block(btype: int, body: bytes, length: int | None = None) -> bytes:
    total = 12 + len(body) if length is None else length
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


SHB = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
IDB = pcapng_block(1, struct.pack("<HHI", 1, 0, 65535))


class TestBadFiles:
    """`douane replay` on files that are not (whole) captures."""

    def test_truncated_pcap(self, tmp_path, net):
        """A pcap cut mid-record: the complete records are accounted, a warning is printed, exit 0."""
        data = net.pcap_bytes([(net.T0 + i, GOOD) for i in range(3)], net.ETHERNET)
        path = tmp_path / "cut.pcap"
        path.write_bytes(data[:-10])
        done = replay(path, "--json")
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert "cut short" in done.stderr
        assert str(path) in done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert [(r["packets_out"], r["bytes_out"]) for r in records] == [(2, 80)]

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            pytest.param(b"", "empty file", id="empty"),
            pytest.param(b"hello, this is a text file\n", "not a pcap or pcapng capture", id="text"),
            pytest.param(b"\xd4\xc3\xb2\xa1\x02\x00", "global header cut short", id="pcap-header-cut"),
            pytest.param(SHB + IDB + pcapng_block(6, b"\x00" * 30), "has length", id="pcapng-length-not-x4"),
            pytest.param(SHB + IDB + struct.pack("<II", 6, 0x7FFFFFF0), "has length",
                         id="pcapng-length-huge"),
            pytest.param(SHB + struct.pack("<II", 6, 4), "has length", id="pcapng-length-below-12"),
            pytest.param(
                struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 60), "claims", id="pcap-caplen-huge",
            ),
        ],
    )
    def test_not_a_capture(self, tmp_path, content, message):
        """Exit status 2 and one clear line naming the file, never a traceback."""
        path = tmp_path / "input.bin"
        path.write_bytes(content)
        done = replay(path)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert f"douane: {path}:" in done.stderr
        assert message in done.stderr

    def test_missing_file(self, tmp_path):
        """A file that does not exist: exit 2 with the path and no traceback."""
        path = tmp_path / "absent.pcap"
        done = replay(path)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert str(path) in done.stderr

    def test_inconsistent_pcapng_block_is_skipped(self, tmp_path, net):
        """A pcapng packet block whose captured length exceeds the block is skipped with a warning."""
        good = net.frames_of(net.stamp([Ether(**MAC) / IP(src=A, dst=B) / UDP(sport=5000, dport=53)]))
        _ts, _lt, data, wirelen = good[0]
        padded = data + b"\x00" * (-len(data) % 4)
        epb = pcapng_block(6, struct.pack("<IIIII", 0, 0, 0, len(data), wirelen) + padded)
        liar = pcapng_block(6, struct.pack("<IIIII", 0, 0, 0, 5000, 5000) + padded)
        path = tmp_path / "liar.pcapng"
        path.write_bytes(SHB + IDB + epb + liar + epb)
        done = replay(path, "--json")
        assert done.returncode == 0, done.stderr
        assert "1 inconsistent pcapng blocks skipped" in done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["packets_out"] for r in records] == [2]
