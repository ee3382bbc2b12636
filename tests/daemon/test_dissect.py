"""The header dissector: fields per link type and encapsulation, and its three-outcome contract.

`dissect` returns the Packet tuple, returns None for a frame without an IP packet douane accounts,
or raises MalformedPacket; nothing else escapes (STYLE.md, "Binary parsing of untrusted bytes").
The contract is fuzzed with Hypothesis from real frame prefixes plus random bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

from douane.daemon.dissect import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    MalformedPacket,
    dissect,
)

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4_A, V4_B = bytes([10, 0, 0, 5]), bytes([198, 51, 100, 7])
TCP4 = IP(src="10.0.0.5", dst="198.51.100.7") / TCP(sport=40000, dport=443, flags="PA") / Raw(b"hello")
UDP6_EXT = (
    IPv6(src="fd00::5", dst="2001:db8::7") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    / IPv6ExtHdrRouting() / UDP(sport=40000, dport=443) / Raw(b"quic")
)


def dissect_bytes(linktype: int, data: bytes, wirelen: int | None = None, fragments=None):
    return dissect(linktype, data, 0, len(data), len(data) if wirelen is None else wirelen,
                   {} if fragments is None else fragments)


class TestDissectFields:
    """What dissect returns for well-formed frames."""

    def test_tcp_ipv4_ethernet(self):
        """Ethernet + IPv4 + TCP gives addresses, ports, IP length, flags and the payload's span."""
        data = bytes(Ether(**MAC) / TCP4)
        vlan, proto, src, dst, sport, dport, size, flags, pay, end, l4 = dissect_bytes(1, data)
        assert (vlan, proto, src, dst, sport, dport) == (0, 6, V4_A, V4_B, 40000, 443)
        assert size == 20 + 20 + 5
        assert flags == 0x18  # PSH | ACK
        assert data[pay:end] == b"hello"
        assert l4 == 14 + 20  # the TCP header, where inspection reads the sequence number

    def test_ipv6_extension_headers(self):
        """The walk over hop-by-hop, destination options and routing headers reaches UDP's ports."""
        data = bytes(Ether(**MAC) / UDP6_EXT)
        pkt = dissect_bytes(1, data)
        assert pkt[1] == 17
        assert pkt[4:7] == (40000, 443, 40 + 24 + 8 + 4)
        assert data[pkt[8]:pkt[9]] == b"quic"

    def test_ipv6_authentication_header(self):
        """The authentication header's length is in 4-byte units (RFC 4302) and is walked."""
        # AH: 12 fixed bytes + a 12-byte ICV = 24 bytes, so its length field is 24 / 4 - 2 = 4.
        ah = AH(nh=6, payloadlen=4, icv=b"\x00" * 12)
        data = bytes(Ether(**MAC) / IPv6(src="fd00::5", dst="2001:db8::7") / ah
                     / TCP(sport=1234, dport=443, flags="S"))
        pkt = dissect_bytes(1, data)
        assert (pkt[1], pkt[4], pkt[5], pkt[7]) == (6, 1234, 443, 0x02)

    def test_padding_not_counted(self):
        """Ethernet padding after a short IP packet is neither payload nor IP bytes."""
        data = bytes(Ether(**MAC) / IP(src="10.0.0.5", dst="198.51.100.7") / UDP(sport=1, dport=2))
        padded = data + b"\x00" * (60 - len(data))
        pkt = dissect_bytes(1, padded)
        assert pkt[6] == 28
        assert pkt[8] == pkt[9] == 14 + 28

    def test_snapped_frame(self):
        """A frame captured shorter than on the wire counts its wire length and payload up to the snap."""
        data = bytes(Ether(**MAC) / TCP4)
        pkt = dissect_bytes(1, data[:56], wirelen=len(data))
        assert pkt[6] == 45
        assert (pkt[8], pkt[9]) == (54, 56)

    @pytest.mark.parametrize(
        ("link", "linktype"),
        [
            pytest.param(lambda ip: Ether(**MAC) / Dot1Q(vlan=7) / ip, LINKTYPE_ETHERNET, id="vlan"),
            pytest.param(lambda ip: Ether(**MAC) / Dot1AD(vlan=3) / Dot1Q(vlan=7) / ip, LINKTYPE_ETHERNET,
                         id="qinq"),
            pytest.param(lambda ip: Ether(**MAC) / Dot1Q(vlan=3, type=0x9100) / Dot1Q(vlan=7) / ip,
                         LINKTYPE_ETHERNET, id="old-qinq"),
            pytest.param(lambda ip: CookedLinux(proto=0x0800) / ip, LINKTYPE_LINUX_SLL, id="sll"),
            pytest.param(lambda ip: CookedLinuxV2(proto=0x0800) / ip, LINKTYPE_LINUX_SLL2, id="sll2"),
            pytest.param(lambda ip: ip, LINKTYPE_RAW, id="raw"),
            pytest.param(lambda ip: ip, 12, id="raw-12"),
            pytest.param(lambda ip: ip, LINKTYPE_IPV4, id="ipv4"),
            pytest.param(lambda ip: struct.pack("<I", 2) / ip, LINKTYPE_NULL, id="null-le"),
            pytest.param(lambda ip: struct.pack(">I", 2) / ip, LINKTYPE_LOOP, id="loop"),
            pytest.param(lambda ip: Ether(**MAC) / PPPoE() / PPP(proto=0x0021) / ip, LINKTYPE_ETHERNET,
                         id="pppoe"),
            pytest.param(lambda ip: Ether(**MAC, type=0x8847) / b"\x00\x01\x01\xff" / ip,
                         LINKTYPE_ETHERNET, id="mpls"),
        ],
    )
    def test_link_types(self, link, linktype):
        """Every link type and encapsulation douane knows leads to the same IPv4/TCP fields."""
        built = link(TCP4)
        data = bytes(built)
        pkt = dissect_bytes(linktype, data)
        assert pkt[1:8] == (6, V4_A, V4_B, 40000, 443, 45, 0x18)
        assert pkt[0] == (7 if not isinstance(built, bytes) and Dot1Q in built else 0)  # innermost tag
        assert data[pkt[8]:pkt[9]] == b"hello"

    def test_ipv6_raw(self):
        """Raw IP with an IPv6 packet (link type 229)."""
        pkt = dissect_bytes(LINKTYPE_IPV6, bytes(UDP6_EXT))
        assert (pkt[1], pkt[4], pkt[5]) == (17, 40000, 443)

    @pytest.mark.parametrize(
        ("linktype", "data"),
        [
            (LINKTYPE_ETHERNET, bytes(Ether(**MAC, type=0x0806) / (b"\x00" * 28))),
            (LINKTYPE_ETHERNET, bytes(Ether(**MAC) / PPPoE() / PPP(proto=0xC021) / (b"\x00" * 8))),
            (LINKTYPE_NULL, struct.pack("<I", 7) + bytes(TCP4)),
            (9999, bytes(TCP4)),
        ],
        ids=["arp", "pppoe-lcp", "null-unknown-family", "unknown-linktype"],
    )
    def test_nothing_to_account(self, linktype, data):
        """Frames without an IP packet give None."""
        assert dissect_bytes(linktype, data) is None

    def test_snapped_inside_extension_headers(self):
        """A frame snapped inside its IPv6 extension headers still counts, with an empty payload span."""
        pkt = dissect_bytes(LINKTYPE_ETHERNET, SNAPPED_EXT, wirelen=90)
        assert (pkt[1], pkt[6]) == (1, 76)
        assert pkt[8] == pkt[9] == len(SNAPPED_EXT)

    def test_wire_length_below_captured_length(self):
        """A corrupt record whose wire length is below its captured length never gives a negative size."""
        data = bytes(Ether(**MAC) / IP(src="10.0.0.5", dst="198.51.100.7", len=0) / TCP(flags="S"))
        pkt = dissect_bytes(LINKTYPE_ETHERNET, data, wirelen=0)
        assert pkt[6] == 40
        assert pkt[8] == pkt[9] == len(data)

    def test_later_fragments_take_first_fragment_ports(self):
        """IPv4 fragments after the first carry the first one's ports, their own size and no payload."""
        datagram = IP(src="10.0.0.5", dst="198.51.100.7", id=9) / UDP(sport=4000, dport=53) / Raw(
            b"x" * 100)
        first, second = (bytes(f) for f in fragment(datagram, fragsize=64))
        state: dict = {}
        assert dissect_bytes(LINKTYPE_RAW, first, fragments=state)[4:7] == (4000, 53, 20 + 64)
        pkt = dissect_bytes(LINKTYPE_RAW, second, fragments=state)
        assert pkt[4:7] == (4000, 53, 20 + 44)
        assert pkt[8] == pkt[9]

    def test_later_ipv6_fragment(self):
        """An IPv6 fragment with a non-zero offset takes the ports of its first fragment."""
        base = IPv6(src="fd00::5", dst="2001:db8::7")
        first = bytes(base / IPv6ExtHdrFragment(id=5, m=1, nh=17) / UDP(sport=4000, dport=53)
                      / Raw(b"x" * 16))
        later = bytes(base / IPv6ExtHdrFragment(id=5, offset=3, nh=17) / Raw(b"y" * 8))
        state: dict = {}
        dissect_bytes(LINKTYPE_RAW, first, fragments=state)
        pkt = dissect_bytes(LINKTYPE_RAW, later, fragments=state)
        assert (pkt[1], pkt[4], pkt[5], pkt[6]) == (17, 4000, 53, 40 + 8 + 8)

    def test_fragment_state_is_bounded(self):
        """The first-fragment memory never grows beyond its bound, however many datagrams pass."""
        from douane.daemon.dissect import MAX_FRAGMENTS

        state: dict = {}
        template = bytes(IP(src="10.0.0.5", dst="198.51.100.7", flags="MF") / UDP(dport=53))
        for ident in range(MAX_FRAGMENTS + 50):
            # A first fragment (MF set, offset 0) with its own identification (IPv4 bytes 4-5).
            datagram = template[:4] + struct.pack("!H", ident) + template[6:]
            dissect_bytes(LINKTYPE_RAW, datagram, fragments=state)
        assert len(state) == MAX_FRAGMENTS


# --- fuzzing -------------------------------------------------------------------------------------

SEEDS = [
    (LINKTYPE_ETHERNET, bytes(Ether(**MAC) / TCP4)),
    (LINKTYPE_ETHERNET, bytes(Ether(**MAC) / UDP6_EXT)),
    (LINKTYPE_ETHERNET, bytes(Ether(**MAC) / Dot1AD(vlan=3) / Dot1Q(vlan=7) / TCP4)),
    (LINKTYPE_ETHERNET, bytes(Ether(**MAC) / PPPoE() / PPP(proto=0x0057) / UDP6_EXT)),
    (LINKTYPE_ETHERNET, bytes(Ether(**MAC, type=0x8847) / b"\x00\x01\x01\xff" / TCP4)),
    (LINKTYPE_LINUX_SLL, bytes(CookedLinux(proto=0x86DD) / UDP6_EXT)),
    (LINKTYPE_LINUX_SLL2, bytes(CookedLinuxV2(proto=0x0800) / TCP4)),
    (LINKTYPE_RAW, bytes(fragment(IP(dst="198.51.100.7") / UDP() / Raw(b"x" * 80), fragsize=40)[1])),
    (LINKTYPE_RAW, bytes(IPv6() / IPv6ExtHdrFragment(offset=2, nh=6) / Raw(b"x" * 8))),
    (LINKTYPE_NULL, struct.pack("<I", 30) + bytes(UDP6_EXT)),
    (LINKTYPE_LOOP, struct.pack(">I", 2) + bytes(TCP4)),
]
# Ethernet + IPv6 (payload length 36) + hop-by-hop + destination options + a routing header whose
# last 6 bytes were not captured (72 bytes captured of 90 on the wire).
SNAPPED_EXT = bytes(
    Ether(**MAC) / IPv6(src="fd00::5", dst="2001:db8::7", plen=36) / IPv6ExtHdrHopByHop(nh=60)
    / IPv6ExtHdrDestOpt(nh=43) / IPv6ExtHdrRouting(nh=1, type=0, segleft=0)
)[:72]
LINKTYPES = [LINKTYPE_ETHERNET, LINKTYPE_RAW, 12, 14, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4,
             LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL]


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """A real frame cut, flipped and extended at random, or random bytes, with a plausible link type."""
    if draw(st.booleans()):
        linktype, data = draw(st.sampled_from(SEEDS))
        buf = bytearray(data[: draw(st.integers(0, len(data)))])
        for _ in range(draw(st.integers(0, 4))):
            if buf:
                buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        buf += draw(st.binary(max_size=64))
        data = bytes(buf)
    else:
        linktype, data = LINKTYPE_ETHERNET, draw(st.binary(max_size=200))
    # Mostly the seed's own link type; sometimes another known one, sometimes any number.
    choice = draw(st.integers(0, 9))
    if choice == 0:
        linktype = draw(st.integers(0, 300))
    elif choice <= 4:
        linktype = draw(st.sampled_from(LINKTYPES))
    wirelen = draw(st.one_of(st.just(len(data)), st.integers(0, 70_000)))
    return linktype, data, wirelen


def check_contract(linktype: int, data: bytes, wirelen: int, state: dict) -> None:
    # Twice: alone, and inside a larger buffer as readers pass it (a chunk of a file, a ring
    # block), where the bytes around the frame must never be read as part of it.
    outcomes = []
    for before, after in ((b"", b""), (b"\xee" * 7, b"\x45" * 64)):
        buf = before + data + after
        start, stop = len(before), len(before) + len(data)
        try:
            pkt = dissect(linktype, buf, start, stop, wirelen, dict(state))
        except MalformedPacket as exc:
            assert exc.reason in ("malformed", "truncated")
            outcomes.append(exc.reason)
            continue
        if pkt is None:
            outcomes.append(None)
            continue
        assert len(pkt) == 11
        vlan, proto, src, dst, sport, dport, size, flags, pay, end, l4 = pkt
        assert 0 <= vlan < 4096
        assert 0 <= proto < 256
        assert len(src) == len(dst)
        assert len(src) in (4, 16)
        assert 0 <= sport < 65536
        assert 0 <= dport < 65536
        assert 0 <= flags < 256
        assert size >= (20 if len(src) == 4 else 40), "IP-layer bytes below the IP header's size"
        assert start <= pay <= end <= stop, "payload span outside the frame"
        assert start <= l4 <= pay, "transport header outside the frame or after the payload"
        outcomes.append(
            (vlan, proto, src, dst, sport, dport, size, flags, pay - start, end - start, l4 - start)
        )
    assert outcomes[0] == outcomes[1], "the bytes around a frame changed its dissection"


class TestDissectContract:
    """dissect returns a well-formed tuple, returns None or raises MalformedPacket; nothing else."""

    @given(frames())
    # Found by the deep profile: an IPv6 frame snapped inside its extension headers gave a payload
    # start beyond the captured bytes.
    @example((LINKTYPE_ETHERNET, SNAPPED_EXT, 90))
    @example((LINKTYPE_ETHERNET, SEEDS[0][1], 0))  # IPv4 with a wire length below the captured one
    @example((LINKTYPE_ETHERNET, SEEDS[0][1][:16] + b"\x00\x00" + SEEDS[0][1][18:], 0))  # and length 0
    @example((LINKTYPE_ETHERNET, SEEDS[1][1][:18] + b"\x00\x00" + SEEDS[1][1][20:], 10))  # IPv6 plen 0
    def test_three_outcomes(self, frame):
        """Whatever the bytes, the outcome is a tuple within the frame, None or MalformedPacket."""
        linktype, data, wirelen = frame
        state: dict = {}
        check_contract(linktype, data, wirelen, state)
        # Again with fragment state a previous frame may have left behind.
        check_contract(linktype, data, wirelen, state)

    @given(st.lists(frames(), min_size=2, max_size=8))
    def test_shared_fragment_state(self, frame_list):
        """A sequence of frames sharing fragment state keeps the contract for each."""
        state: dict = {}
        for linktype, data, wirelen in frame_list:
            check_contract(linktype, data, wirelen, state)
