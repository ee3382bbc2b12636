"""Header dissection: from a captured frame to the fields a flow needs.

This is the per-packet fast path, so it parses only headers, builds no objects but one tuple and reads
bytes by index. `dissect` has the contract of every douane dissector (STYLE.md): it returns a result,
returns `None` for a frame that carries no IP packet we account (ARP, LLDP, unknown link type), or
raises `MalformedPacket`. Nothing else escapes.
"""

from __future__ import annotations

import struct

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW's historical values on some systems write 12 or 14 into files.
RAW_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14})

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = frozenset({0x8100, 0x88A8, 0x9100})  # 802.1Q, 802.1ad (QinQ), old QinQ
ETHERTYPE_MPLS = frozenset({0x8847, 0x8848})
ETHERTYPE_PPPOE_SESSION = 0x8864

PROTO_TCP = 6
PROTO_UDP = 17
# Protocols whose first four bytes are source and destination ports.
PORT_PROTOS = frozenset({PROTO_TCP, PROTO_UDP, 132, 136})  # + SCTP, UDP-Lite
# IPv6 extension headers walked to reach the transport header (RFC 8200 section 4; 135, 139, 140:
# Mobility, HIP, Shim6 share the generic length format).
IPV6_EXT_GENERIC = frozenset({0, 43, 60, 135, 139, 140})
IPV6_FRAGMENT = 44
IPV6_AH = 51
MAX_IPV6_EXT = 16  # more headers than this is an attack, not a packet
MAX_MPLS_LABELS = 8

# One C call per header instead of a dozen byte look-ups (measured: about 3x faster per header).
IPV4_HEADER = struct.Struct("!BxHHHxB2x4s4s")  # version/ihl, total length, id, flags/offset, proto, src, dst
IPV6_HEADER = struct.Struct("!B3xHB1x16s16s")  # version, payload length, next header, src, dst
TCP_HEADER = struct.Struct("!HH8xBB")  # ports, data offset, flags
PORTS = struct.Struct("!HH")
ETH_TAG = struct.Struct("!HH")  # Ethernet type, and the 802.1Q tag control if the type says so

# Remembered first fragments (for ports of the later ones); bounded so fragments cannot grow memory.
MAX_FRAGMENTS = 4096

# The fields a flow needs, in this order:
# (vlan, proto, src, dst, sport, dport, ip_bytes, tcp_flags, payload_start, payload_end, l4_start)
# src and dst are the raw 4- or 16-byte addresses. payload_* index into the buffer; they are equal
# when there is no transport payload (or a non-first fragment, whose bytes we do not inspect).
# l4_start is where the transport header starts (inspection reads TCP sequence numbers there).
Packet = tuple[int, int, bytes, bytes, int, int, int, int, int, int, int]


class MalformedPacket(ValueError):
    """A frame whose headers are impossible or cut short. `reason` is a bounded metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # "malformed" or "truncated"
        self.detail = detail  # short, fixed text naming the header, never packet bytes


def _truncated(what: str) -> MalformedPacket:
    return MalformedPacket("truncated", what)


def _malformed(what: str) -> MalformedPacket:
    return MalformedPacket("malformed", what)


def dissect(
    linktype: int, data: bytes, start: int, n: int, wirelen: int,
    fragments: dict[tuple[object, ...], int],
) -> Packet | None:
    """Parse one frame's link, IP and transport headers.

    Args:
        linktype: the capture's link type for this frame.
        data: a buffer holding the frame's captured bytes (possibly shorter than the frame on
            the wire) at data[start:n]; readers pass a whole chunk of a file or a ring block,
            so no frame is copied.
        start: where the frame starts in data.
        n: where the captured bytes end in data.
        wirelen: the frame's length on the wire, to tell a snapped capture from a lying header.
        fragments: state shared across calls, mapping an IP datagram to the ports of its first
            fragment so that later fragments join the same flow.

    Returns:
        The `Packet` tuple (its payload offsets index into data), or None when the frame carries
        nothing we account.

    Raises:
        MalformedPacket: headers cut short ("truncated") or impossible ("malformed").
    """
    # Where the frame ends on the wire. A record whose wire length is below its captured length
    # is corrupt: trust the bytes we hold, so that no size can go negative.
    wire_end = start + wirelen if start + wirelen > n else n
    if linktype == LINKTYPE_ETHERNET and n >= start + 42:
        # Fast path for most of a gateway's traffic: Ethernet with at most one 802.1Q tag, IPv4
        # without options and not fragmented or IPv6 without extension headers, then TCP or UDP.
        # It checks what the general path checks; anything else, or any doubt, falls through.
        etype, tci = ETH_TAG.unpack_from(data, start + 12)
        if etype == 0x8100:
            vlan = tci & 0x0FFF
            etype = (data[start + 16] << 8) | data[start + 17]
            off = start + 18
        else:
            vlan = 0
            off = start + 14
        ip_bytes = 0
        if etype == ETHERTYPE_IPV4 and n >= off + 28:
            b0, total, _ident, frag, proto, src, dst = IPV4_HEADER.unpack_from(data, off)
            if b0 == 0x45 and not frag & 0x3FFF and 20 <= total <= wire_end - off:
                ip_bytes = total
                l4 = off + 20
        elif etype == ETHERTYPE_IPV6 and n >= off + 48:
            b0, plen, proto, src, dst = IPV6_HEADER.unpack_from(data, off)
            if b0 >> 4 == 6 and 0 < plen <= wire_end - off - 40:
                ip_bytes = plen + 40
                l4 = off + 40
        if ip_bytes:
            end = off + ip_bytes
            if end > n:
                end = n
            if proto == PROTO_TCP:
                if ip_bytes >= l4 - off + 20 and n >= l4 + 14:
                    sport, dport, doff, flags = TCP_HEADER.unpack_from(data, l4)
                    if doff >= 0x50:
                        pay = l4 + ((doff >> 4) << 2)
                        if pay > end:
                            pay = end
                        return (vlan, PROTO_TCP, src, dst, sport, dport, ip_bytes, flags, pay, end, l4)
            elif proto == PROTO_UDP and ip_bytes >= l4 - off + 8:
                sport, dport = PORTS.unpack_from(data, l4)
                pay = l4 + 8
                if pay > end:
                    pay = end
                return (vlan, PROTO_UDP, src, dst, sport, dport, ip_bytes, 0, pay, end, l4)
    vlan = 0
    if linktype == LINKTYPE_ETHERNET:
        if n < start + 14:
            raise _truncated("ethernet header")
        etype = (data[start + 12] << 8) | data[start + 13]
        off = start + 14
        while etype in ETHERTYPE_VLAN:
            if n < off + 4:
                raise _truncated("vlan tag")
            # The innermost tag wins: it is the one a switch delivers on (as nDPI keys flows).
            vlan = ((data[off] << 8) | data[off + 1]) & 0x0FFF
            etype = (data[off + 2] << 8) | data[off + 3]
            off += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if n < start + 16:
            raise _truncated("linux cooked header")
        etype = (data[start + 14] << 8) | data[start + 15]
        off = start + 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if n < start + 20:
            raise _truncated("linux cooked v2 header")
        etype = (data[start] << 8) | data[start + 1]
        off = start + 20
    elif linktype in RAW_LINKTYPES or linktype in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        if n < start + 1:
            raise _truncated("raw ip")
        etype = ETHERTYPE_IPV4 if data[start] >> 4 == 4 else ETHERTYPE_IPV6
        off = start
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < start + 4:
            raise _truncated("loopback header")
        # The address family is in host order for NULL and network order for LOOP; AF_INET is 2
        # everywhere, AF_INET6 is 10, 24, 28 or 30 depending on the OS that wrote the file.
        family = data[start] | data[start + 3]
        if family == 2:
            etype = ETHERTYPE_IPV4
        elif family in (10, 24, 28, 30):
            etype = ETHERTYPE_IPV6
        else:
            return None
        off = start + 4
    else:
        return None

    if etype == ETHERTYPE_PPPOE_SESSION:
        # RFC 2516: 6-byte PPPoE header, then the 2-byte PPP protocol (0x0021 IPv4, 0x0057 IPv6).
        if n < off + 8:
            raise _truncated("pppoe header")
        ppp = (data[off + 6] << 8) | data[off + 7]
        off += 8
        if ppp == 0x0021:
            etype = ETHERTYPE_IPV4
        elif ppp == 0x0057:
            etype = ETHERTYPE_IPV6
        else:
            return None
    elif etype in ETHERTYPE_MPLS:
        # RFC 3032: 4-byte label entries until the bottom-of-stack bit; then the IP version nibble.
        for _ in range(MAX_MPLS_LABELS):
            if n < off + 4:
                raise _truncated("mpls label")
            bottom = data[off + 2] & 1
            off += 4
            if bottom:
                break
        else:
            raise _malformed("mpls label stack too deep")
        if n <= off:
            raise _truncated("ip after mpls")
        etype = ETHERTYPE_IPV4 if data[off] >> 4 == 4 else ETHERTYPE_IPV6

    avail = wire_end - off  # bytes of the IP packet as it was on the wire (may include padding)
    if etype == ETHERTYPE_IPV4:
        if n < off + 20:
            raise _truncated("ipv4 header")
        b0, total, ident, frag, proto, src, dst = IPV4_HEADER.unpack_from(data, off)
        if b0 >> 4 != 4:
            raise _malformed("ipv4 version")
        ihl = (b0 & 0x0F) << 2
        if ihl < 20:
            raise _malformed("ipv4 header length")
        if n < off + ihl:
            raise _truncated("ipv4 options")
        if total == 0:
            # Captured on the sending host with TCP segmentation offload: the NIC fills the length.
            total = avail
        elif total < ihl or total > avail:
            raise _malformed("ipv4 total length")
        l4 = off + ihl
        end = off + total
        if frag & 0x1FFF:
            # A later fragment: no transport header; it belongs to the flow of its first fragment.
            ports = fragments.get((src, dst, ident, proto), 0)
            return (vlan, proto, src, dst, ports >> 16, ports & 0xFFFF, total, 0, l4, l4, l4)
        frag_id = (src, dst, ident, proto) if frag & 0x2000 else None
        ip_bytes = total
    elif etype == ETHERTYPE_IPV6:
        if n < off + 40:
            raise _truncated("ipv6 header")
        b0, plen, proto, src, dst = IPV6_HEADER.unpack_from(data, off)
        if b0 >> 4 != 6:
            raise _malformed("ipv6 version")
        if plen == 0:
            plen = avail - 40  # jumbogram (RFC 2675) or segmentation offload
        elif plen + 40 > avail:
            raise _malformed("ipv6 payload length")
        ip_bytes = plen + 40
        l4 = off + 40
        end = off + ip_bytes
        frag_id = None
        for _ in range(MAX_IPV6_EXT):
            if proto in IPV6_EXT_GENERIC:
                if n < l4 + 2:
                    raise _truncated("ipv6 extension header")
                proto, hlen = data[l4], (data[l4 + 1] + 1) << 3
            elif proto == IPV6_FRAGMENT:
                if n < l4 + 8:
                    raise _truncated("ipv6 fragment header")
                ident = (src, dst, data[l4 + 4 : l4 + 8], data[l4])
                offset = ((data[l4 + 2] << 8) | data[l4 + 3]) >> 3
                if offset:
                    ports = fragments.get(ident, 0)
                    return (
                        vlan, data[l4], src, dst, ports >> 16, ports & 0xFFFF, ip_bytes, 0, l4, l4, l4,
                    )
                if data[l4 + 3] & 1:
                    frag_id = ident
                proto, hlen = data[l4], 8
            elif proto == IPV6_AH:
                if n < l4 + 2:
                    raise _truncated("ipv6 authentication header")
                proto, hlen = data[l4], (data[l4 + 1] + 2) << 2  # RFC 4302: in 4-byte units
            else:
                break
            l4 += hlen
            if l4 > end:
                raise _malformed("ipv6 extension header length")
        else:
            raise _malformed("ipv6 extension header chain too long")
    else:
        return None

    if proto in PORT_PROTOS and end < l4 + (20 if proto == PROTO_TCP else 8):
        # The IP length leaves no room for the transport header: what follows is padding or
        # another packet's bytes, never this header.
        raise _malformed("transport header beyond ip length")
    if end > n:
        end = n  # snapped capture: inspect only what we have
    sport = dport = flags = 0
    pay = l4
    if proto in PORT_PROTOS:
        if proto == PROTO_TCP:
            if n < l4 + 14:
                raise _truncated("tcp header")
            sport, dport, doff, flags = TCP_HEADER.unpack_from(data, l4)
            doff = (doff >> 4) << 2
            if doff < 20:
                raise _malformed("tcp data offset")
            pay = l4 + doff
        else:
            if n < l4 + 4:
                raise _truncated("transport ports")
            sport, dport = PORTS.unpack_from(data, l4)
            pay = l4 + 8 if proto == PROTO_UDP else l4
        if frag_id is not None:
            if len(fragments) >= MAX_FRAGMENTS:
                del fragments[next(iter(fragments))]
            fragments[frag_id] = (sport << 16) | dport
    if pay > end:
        pay = end  # also when IPv6 extension headers reach past the captured bytes
        if l4 > pay:
            l4 = pay
    return (vlan, proto, src, dst, sport, dport, ip_bytes, flags, pay, end, l4)
