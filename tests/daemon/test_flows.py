"""Flow accounting against hand-computed expectations, on scapy-built captures.

Every byte figure below is worked out by hand from header sizes (IPv4 20, IPv6 40, TCP 20 without
options, UDP 8, ICMP 8, IPv6 extension headers 8 each) plus the payload; bytes are IP-layer bytes, so
Ethernet (14), VLAN tags (4 each) and cooked headers (16/20) never count.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from douane.daemon.flows import FlowConfig, InternalNetworks, direction_of


def iso(ts: float) -> str:
    """DESIGN.md's time format, computed independently of douane's iso_time."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ether() -> Ether:
    """An Ethernet header with fixed addresses (scapy would otherwise resolve them, slowly)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def counts(record: dict) -> tuple[int, int, int, int]:
    return record["packets_out"], record["bytes_out"], record["packets_in"], record["bytes_in"]


class TestTcpAccounting:
    """TCP flows: counters, initiator, times and closing."""

    def test_session_with_retransmission(self, net, write_pcap, run_flows):
        """A retransmitted segment is counted again, in packets and in bytes."""
        pkts = net.tcp_session(net.CLIENT, net.SERVER, 40000, 443, data=[b"A" * 100, b"A" * 100])
        run = run_flows(write_pcap(net.stamp(pkts)))
        rec = run.only()
        # out: SYN 40, ACK 40, data 140, retransmitted data 140, FIN 40, last ACK 40
        # in: SYN-ACK 40, reply 40 + 2, FIN 40
        assert counts(rec) == (6, 440, 3, 122)
        assert (rec["proto"], rec["src"], rec["sport"], rec["dst"], rec["dport"]) == (
            "tcp", net.CLIENT, 40000, net.SERVER, 443,
        )
        assert rec["direction"] == "outbound"
        assert rec["vlan"] is None
        assert run.reasons == ["fin"]

    def test_start_and_end_times(self, net, write_pcap, run_flows):
        """start is the first packet's time and end the last packet's, in UTC with milliseconds."""
        pkts = net.stamp(net.tcp_session(net.CLIENT, net.SERVER, 40000, 443), start=net.T0 + 0.25,
                         step=0.5)
        rec = run_flows(write_pcap(pkts)).only()
        assert rec["start"] == iso(net.T0 + 0.25) == "2025-11-28T10:00:00.250Z"
        assert rec["end"] == iso(net.T0 + 0.25 + 7 * 0.5) == "2025-11-28T10:00:03.750Z"

    def test_syn_decides_initiator_over_ports(self, net, write_pcap, run_flows):
        """The SYN's sender is src even when its port looks like a server port and the peer's does not."""
        pkts = [
            net.tcp(net.CLIENT, net.SERVER, 443, 50000, "S"),
            net.tcp(net.SERVER, net.CLIENT, 50000, 443, "SA"),
            net.tcp(net.CLIENT, net.SERVER, 443, 50000, "A"),
        ]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["src"], rec["sport"], rec["dport"]) == (net.CLIENT, 443, 50000)
        assert counts(rec) == (2, 80, 1, 40)

    def test_syn_ack_first_makes_receiver_initiator(self, net, write_pcap, run_flows):
        """When the capture starts with a SYN-ACK, its receiver opened the flow."""
        pkts = [
            net.tcp(net.SERVER, net.CLIENT, 50001, 50000, "SA"),
            net.tcp(net.CLIENT, net.SERVER, 50000, 50001, "A"),
        ]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["src"], rec["sport"], rec["dst"], rec["dport"]) == (
            net.CLIENT, 50000, net.SERVER, 50001,
        )
        assert counts(rec) == (1, 40, 1, 40)

    def test_mid_flow_capture_uses_server_port(self, net, write_pcap, run_flows):
        """A capture that starts mid-flow with the server's packet still makes the client src."""
        pkts = [
            net.tcp(net.SERVER, net.CLIENT, 443, 40000, "PA", b"x" * 60),
            net.tcp(net.CLIENT, net.SERVER, 40000, 443, "A"),
            net.tcp(net.CLIENT, net.SERVER, 40000, 443, "PA", b"y" * 5),
        ]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["src"], rec["sport"], rec["dst"], rec["dport"]) == (
            net.CLIENT, 40000, net.SERVER, 443,
        )
        assert rec["direction"] == "outbound"
        assert counts(rec) == (2, 85, 1, 100)

    def test_rst_closes_and_new_syn_starts_new_flow(self, net, write_pcap, run_flows):
        """A RST ends the flow; a new SYN on the same 5-tuple starts a second flow."""
        first = [
            net.tcp(net.CLIENT, net.SERVER, 40000, 443, "S"),
            net.tcp(net.SERVER, net.CLIENT, 443, 40000, "RA"),
        ]
        second = [
            net.tcp(net.CLIENT, net.SERVER, 40000, 443, "S"),
            net.tcp(net.SERVER, net.CLIENT, 443, 40000, "SA"),
            net.tcp(net.CLIENT, net.SERVER, 40000, 443, "A"),
        ]
        run = run_flows(write_pcap(net.stamp(first + second)))
        assert [counts(r) for r in run.records] == [(1, 40, 1, 40), (2, 80, 1, 40)]
        assert run.reasons == ["rst", "end"]
        assert run.records[1]["start"] == iso(net.T0 + 0.2)

    def test_new_syn_after_fin_close_starts_new_flow(self, net, write_pcap, run_flows):
        """After FIN both ways, a SYN reusing the 5-tuple (even within the close grace) is a new flow."""
        sessions = net.tcp_session(net.CLIENT, net.SERVER, 40000, 443) * 2
        run = run_flows(write_pcap(net.stamp(p.copy() for p in sessions)))
        assert len(run.records) == 2
        # out: SYN 40, ACK 40, "GET" 43, FIN 40, last ACK 40; in: SYN-ACK 40, "OK" 42, FIN 40
        assert counts(run.records[0]) == counts(run.records[1]) == (5, 203, 3, 122)
        assert run.reasons == ["fin", "fin"]

    def test_fin_closed_flow_leaves_table_after_grace(self, net, run_flows):
        """A FIN-closed flow is handed over once the grace period has passed in packet time."""
        session = net.stamp(net.tcp_session(net.CLIENT, net.SERVER, 40000, 443))
        later = net.stamp([net.udp(net.CLIENT2, net.SERVER2, 5000, 53)], start=net.T0 + 10)
        run = run_flows(net.frames_of(session + later), FlowConfig(tcp_close_grace=2.0))
        # The TCP flow is closed by the expiry sweep at the UDP packet, before the flush.
        assert [r["proto"] for r in run.records] == ["tcp", "udp"]
        assert run.reasons == ["fin", "end"]


class TestOtherProtocols:
    """UDP, ICMP and ICMPv6 flows."""

    def test_udp_request_response(self, net, write_pcap, run_flows):
        """A UDP exchange is one flow with per-direction counts, opened by the first sender."""
        pkts = [
            net.udp(net.CLIENT, net.SERVER, 53000, 53, b"q" * 30),
            net.udp(net.SERVER, net.CLIENT, 53, 53000, b"r" * 100),
            net.udp(net.CLIENT, net.SERVER, 53000, 53, b"q" * 30),
        ]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["proto"], rec["src"], rec["sport"], rec["dport"]) == ("udp", net.CLIENT, 53000, 53)
        assert counts(rec) == (2, 2 * (20 + 8 + 30), 1, 20 + 8 + 100)

    def test_udp_response_first_is_turned_by_server_port(self, net, write_pcap, run_flows):
        """A UDP flow first seen from port 53 is attributed to the other side."""
        pkts = [net.udp(net.SERVER, net.CLIENT, 53, 53000), net.udp(net.CLIENT, net.SERVER, 53000, 53)]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["src"], rec["sport"], rec["dst"], rec["dport"]) == (net.CLIENT, 53000, net.SERVER, 53)

    def test_icmp_echo(self, net, write_pcap, run_flows):
        """An ICMP echo and its reply form one flow without ports."""
        pkts = [net.icmp_echo(net.CLIENT, net.SERVER), net.icmp_echo(net.SERVER, net.CLIENT, reply=True)]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert rec["proto"] == "icmp"
        assert rec["sport"] is None
        assert rec["dport"] is None
        assert counts(rec) == (1, 20 + 8 + 32, 1, 20 + 8 + 32)
        assert rec["direction"] == "outbound"

    def test_icmpv6_echo(self, net, write_pcap, run_flows):
        """An ICMPv6 echo and its reply form one flow without ports."""
        pkts = [
            ether() / IPv6(src=net.CLIENT6, dst=net.SERVER6) / ICMPv6EchoRequest(data=b"p" * 16),
            ether() / IPv6(src=net.SERVER6, dst=net.CLIENT6) / ICMPv6EchoReply(data=b"p" * 16),
        ]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["proto"], rec["src"], rec["dst"], rec["sport"]) == (
            "icmpv6", net.CLIENT6, net.SERVER6, None,
        )
        assert counts(rec) == (1, 40 + 8 + 16, 1, 40 + 8 + 16)


class TestIpv6ExtensionHeaders:
    """IPv6 extension headers are walked to reach the transport ports."""

    def test_hop_by_hop_destination_routing(self, net, write_pcap, run_flows):
        """Ports are found behind hop-by-hop, destination options and routing headers, all counted."""
        ext = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
        pkts = [
            ether() / IPv6(src=net.CLIENT6, dst=net.SERVER6) / ext / UDP(sport=40000, dport=443)
            / Raw(b"z" * 12),
            net.udp(net.SERVER6, net.CLIENT6, 443, 40000, b"y" * 4),
        ]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["src"], rec["sport"], rec["dst"], rec["dport"]) == (
            net.CLIENT6, 40000, net.SERVER6, 443,
        )
        assert counts(rec) == (1, 40 + 3 * 8 + 8 + 12, 1, 40 + 8 + 4)
        assert rec["direction"] == "outbound"


class TestVlan:
    """802.1Q and QinQ frames."""

    def test_single_tag(self, net, write_pcap, run_flows):
        """The VLAN id is in the record and the 4-byte tag is not counted."""
        pkts = [ether() / Dot1Q(vlan=100) / IP(src=net.CLIENT, dst=net.SERVER) / UDP(sport=5000, dport=53)]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert rec["vlan"] == 100
        assert counts(rec) == (1, 28, 0, 0)

    def test_qinq_innermost_tag(self, net, write_pcap, run_flows):
        """For QinQ (802.1ad outer, 802.1Q inner) the innermost VLAN id is the record's vlan."""
        pkts = [
            ether() / Dot1AD(vlan=421) / Dot1Q(vlan=785) / IP(src=net.CLIENT, dst=net.SERVER)
            / UDP(sport=5000, dport=53)
        ]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert rec["vlan"] == 785
        assert counts(rec) == (1, 28, 0, 0)

    def test_same_tuple_on_two_vlans_is_two_flows(self, net, write_pcap, run_flows):
        """The same 5-tuple on two VLANs gives two flows."""
        pkts = [
            ether() / Dot1Q(vlan=vid) / IP(src=net.CLIENT, dst=net.SERVER) / UDP(sport=5000, dport=53)
            for vid in (10, 20, 10)
        ]
        run = run_flows(write_pcap(net.stamp(pkts)))
        assert sorted((r["vlan"], r["packets_out"]) for r in run.records) == [(10, 2), (20, 1)]


class TestFragments:
    """Every fragment is counted, in the flow of the first fragment."""

    def test_ipv4_fragments(self, net, write_pcap, run_flows):
        """IPv4 fragments all count, with the IP-layer bytes of each, in the first fragment's flow."""
        datagram = IP(src=net.CLIENT, dst=net.SERVER, id=4242) / UDP(sport=40000, dport=53) / Raw(
            b"d" * 2000
        )
        frags = fragment(datagram, fragsize=800)
        assert [f.frag for f in frags] == [0, 100, 200]
        # 2008 bytes of UDP split 800 + 800 + 408, each behind its own 20-byte IPv4 header
        pkts = [ether() / f for f in frags] + [net.udp(net.SERVER, net.CLIENT, 53, 40000, b"r" * 20)]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["sport"], rec["dport"]) == (40000, 53)
        assert counts(rec) == (3, 820 + 820 + 428, 1, 48)

    def test_ipv6_fragments(self, net, write_pcap, run_flows):
        """IPv6 fragments all count, fragment headers included, in the first fragment's flow."""
        datagram = (
            IPv6(src=net.CLIENT6, dst=net.SERVER6) / IPv6ExtHdrFragment(id=77)
            / UDP(sport=40000, dport=53) / Raw(b"d" * 2000)
        )
        frags = fragment6(datagram, 1280)
        assert len(frags) == 2
        # 2008 bytes of UDP: 1232 + 776, each behind IPv6 (40) and a fragment header (8)
        pkts = [ether() / f for f in frags]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["sport"], rec["dport"]) == (40000, 53)
        assert counts(rec) == (2, 1280 + 824, 0, 0)
        assert sum(len(f) for f in frags) == 1280 + 824


class TestLinkTypes:
    """Every link type and capture format gives the same flows."""

    @staticmethod
    def packets(net):
        return net.stamp(net.tcp_session(net.CLIENT, net.SERVER, 40000, 443, data=[b"A" * 100]))

    EXPECTED = (5, 40 * 4 + 140, 3, 122)

    @pytest.mark.parametrize("fmt", ["pcap", "pcap-le", "pcap-be", "pcapng"])
    def test_formats(self, net, write_pcap, run_flows, fmt):
        """Native, little- and big-endian pcap and pcapng give the same flow."""
        rec = run_flows(write_pcap(self.packets(net), fmt=fmt)).only()
        assert counts(rec) == self.EXPECTED
        assert rec["start"] == iso(net.T0)

    @pytest.mark.parametrize("fmt", ["pcap", "pcap-be"])
    def test_nanosecond_pcap(self, net, write_pcap, run_flows, fmt):
        """A nanosecond pcap gives the same counts and sub-millisecond-exact times."""
        pkts = net.stamp(self.packets(net), start=net.T0 + 0.123456789, step=0.001)
        rec = run_flows(write_pcap(pkts, fmt=fmt, nano=True)).only()
        assert counts(rec) == self.EXPECTED
        assert rec["start"] == "2025-11-28T10:00:00.123Z"

    @pytest.mark.parametrize("layer", [CookedLinux, CookedLinuxV2], ids=["sll", "sll2"])
    def test_linux_cooked(self, net, write_pcap, run_flows, layer):
        """Linux cooked captures v1 (16-byte header) and v2 (20 bytes) are read without the header."""
        pkts = [layer(proto=0x0800) / p[IP] for p in self.packets(net)]
        path = write_pcap(net.stamp(pkts))
        rec = run_flows(path).only()
        assert counts(rec) == self.EXPECTED

    def test_raw_ip(self, net, write_pcap, run_flows):
        """Raw IP captures (linktype 101) carry IPv4 and IPv6 with no link header."""
        pkts = [p[IP] for p in self.packets(net)] + [
            IPv6(src=net.CLIENT6, dst=net.SERVER6) / UDP(sport=5000, dport=53)
        ]
        run = run_flows(write_pcap(net.stamp(pkts), linktype=net.RAW))
        assert sorted(counts(r) for r in run.records) == sorted([self.EXPECTED, (1, 48, 0, 0)])

    def test_pcapng_two_interfaces(self, net, write_pcap, run_flows):
        """A pcapng with an Ethernet and a raw IPv4 interface accounts packets from both."""
        pkts = self.packets(net)
        for i, pkt in enumerate(pkts):
            if i % 2:
                pkts[i] = pkt[IP]
                pkts[i].time = pkt.time
                pkts[i].sniffed_on = "tun0"
            else:
                pkt.sniffed_on = "eth0"
        rec = run_flows(write_pcap(pkts, fmt="pcapng")).only()
        assert counts(rec) == self.EXPECTED


class TestDirection:
    """direction from the default internal networks."""

    @pytest.mark.parametrize(
        ("src", "dst", "expected"),
        [
            ("10.0.0.5", "198.51.100.7", "outbound"),
            ("198.51.100.7", "172.16.3.4", "inbound"),
            ("10.0.0.5", "192.168.1.20", "internal"),
            ("198.51.100.7", "203.0.113.9", "external"),
            ("100.64.1.1", "8.8.8.8", "outbound"),
            ("127.0.0.1", "127.0.0.2", "internal"),
            ("fd00::5", "2001:db8::7", "outbound"),
            ("2001:db8::7", "fe80::1", "inbound"),
            ("::1", "::1", "internal"),
            ("2001:db8::7", "2001:db8::8", "external"),
        ],
    )
    def test_direction_of_opener(self, net, write_pcap, run_flows, src, dst, expected):
        """The flow's direction follows whether its opener and its peer are internal."""
        pkts = [net.tcp(src, dst, 40000, 40001, "S")]
        rec = run_flows(write_pcap(net.stamp(pkts))).only()
        assert (rec["src"], rec["direction"]) == (src, expected)

    def test_configured_networks(self):
        """Configured internal networks replace the defaults."""
        internal = InternalNetworks(["198.51.100.0/24"])
        addr = bytes([198, 51, 100, 7])
        assert direction_of(internal, addr, bytes([10, 0, 0, 5])) == "outbound"


class TestTimeouts:
    """Idle and active timeouts, on packet time."""

    def test_idle_timeout_splits_flow(self, net, run_flows):
        """A 5-tuple silent for longer than idle_timeout becomes two flows, each reported once."""
        pkts = net.stamp([net.udp(net.CLIENT, net.SERVER, 5000, 53) for _ in range(3)], step=1.0)
        pkts += net.stamp([net.udp(net.CLIENT, net.SERVER, 5000, 53) for _ in range(2)],
                          start=net.T0 + 30)
        run = run_flows(net.frames_of(pkts), FlowConfig(idle_timeout=10))
        assert [r["packets_out"] for r in run.records] == [3, 2]
        assert run.reasons == ["idle", "end"]
        assert run.records[0]["end"] == iso(net.T0 + 2)
        assert run.records[1]["start"] == iso(net.T0 + 30)

    def test_activity_keeps_flow_open(self, net, run_flows):
        """Packets closer together than idle_timeout keep one flow, however long it lasts."""
        pkts = net.stamp([net.udp(net.CLIENT, net.SERVER, 5000, 53) for _ in range(10)], step=8.0)
        run = run_flows(net.frames_of(pkts), FlowConfig(idle_timeout=10))
        assert [r["packets_out"] for r in run.records] == [10]

    def test_active_timeout_calls_on_update(self, net, run_flows):
        """A long flow is reported to on_update every active_timeout seconds, then closed once."""
        pkts = net.stamp([net.udp(net.CLIENT, net.SERVER, 5000, 53) for _ in range(13)], step=1.0)
        run = run_flows(net.frames_of(pkts), FlowConfig(idle_timeout=60, active_timeout=5))
        # Updates happen at the sweep of the packet at t=5 (5 packets seen) and t=10 (10 seen).
        assert run.updates == [(net.T0 + 4, 5, 190, 0, 0), (net.T0 + 9, 10, 380, 0, 0)]
        assert [r["packets_out"] for r in run.records] == [13]


class TestMaxFlows:
    """The bounded flow table."""

    def test_eviction_counted_and_every_flow_reported_once(self, net, run_flows):
        """Beyond max_flows the oldest flow is evicted and counted; every flow is still reported once."""
        pkts = [net.udp(net.CLIENT, net.SERVER, 5000 + i, 53) for i in range(5)]
        pkts.append(net.udp(net.CLIENT, net.SERVER, 5000, 53))  # the first flow, evicted, comes back
        run = run_flows(net.frames_of(net.stamp(pkts)), FlowConfig(max_flows=3))
        table = run.table
        assert table.stats.evictions == 3
        assert table.stats.flows_created == 6
        assert len(run.closed) == 6
        assert len({id(f) for f in run.closed}) == 6
        assert sum(r["packets_out"] for r in run.records) == 6
        assert run.reasons.count("evicted") == 3
        assert run.reasons[:3] == ["evicted"] * 3
        assert [r["sport"] for r in run.records[:3]] == [5000, 5001, 5002]
        assert len(table) == 0
