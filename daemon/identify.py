"""Who a flow talks to: hostnames from DNS answers, TLS SNI, HTTP Host and QUIC Initials.

The flow table calls `Identify.on_new_flow` once per flow and `Identify.on_payload` for the packets
that carry payload while the flow's `inspect` state is set. Inspection is per flow and bounded: it
stops once the name is known or after a few packets and kilobytes per direction, so its cost is a
few packets per flow, never every packet. DNS flows are the exception: every answer feeds the cache.

Precedence of the name a flow carries: TLS or QUIC SNI, then HTTP Host, then the DNS answer the client
was given for the address (DESIGN.md `hostname_source`).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from douane.daemon.config import IdentifyConfig
from douane.daemon.content import Content
from douane.daemon.dissect import PROTO_TCP, PROTO_UDP, MalformedPacket
from douane.daemon.dns import address_names, looks_like_dns, parse_dns_tcp, read_answers
from douane.daemon.dnscache import DnsCache
from douane.daemon.hostname import SOURCE_RANK
from douane.daemon.http import http_host, looks_like_http
from douane.daemon.quic import CryptoStream, parse_initials
from douane.daemon.tls import looks_like_tls, parse_client_hello, parse_tls_stream

if TYPE_CHECKING:
    from douane.daemon.flows import Flow

DNS_PORTS = frozenset({53, 5353, 5355})  # DNS, mDNS, LLMNR: the same wire format
SEQ = struct.Struct("!I")
TCP_SYN = 0x02

# Hostname sources and their precedence: hostname.SOURCE_RANK, shared with the flow collector.


class Stream:
    """A direction's first bytes in sequence order, from TCP segments in any order, bounded."""

    __slots__ = ("base", "data", "limit", "pending", "synced")

    MAX_PENDING = 16  # out-of-order segments held while a gap waits to be filled

    def __init__(self, limit: int, isn: int | None = None) -> None:
        self.base = isn  # sequence number of data[0]; from the SYN when we saw it
        self.synced = isn is not None  # base is the true start of the stream
        self.data = bytearray()
        self.pending: dict[int, bytes] = {}
        self.limit = limit

    def add(self, seq: int, payload: bytes) -> bool:
        """Adds a segment; True when the contiguous prefix grew."""
        if self.base is None:
            self.base = seq
        rel = (seq - self.base) & 0xFFFFFFFF
        if rel >= 0x80000000:
            # Before our start: without the SYN we may have started on a later segment.
            if self.synced or len(self.pending) >= self.MAX_PENDING:
                return False
            back = 0x100000000 - rel
            if back > self.limit:
                return False
            if self.data:
                self.pending[0] = bytes(self.data)
            self.pending = {k + back: v for k, v in self.pending.items()}
            self.base = seq
            self.data = bytearray()
            rel = 0
        if rel > self.limit:
            return False
        end = len(self.data)
        if rel > end:
            if len(self.pending) < self.MAX_PENDING:
                self.pending[rel] = payload
            return False
        grew = self._append(payload[end - rel :])
        while self.pending and len(self.data) < self.limit:
            end = len(self.data)
            ready = [k for k in self.pending if k <= end]
            if not ready:
                break
            for k in sorted(ready):
                chunk = self.pending.pop(k)
                grew = self._append(chunk[len(self.data) - k :]) or grew
        return grew

    def _append(self, chunk: bytes) -> bool:
        room = self.limit - len(self.data)
        if room <= 0 or not chunk:
            return False
        self.data += chunk[:room]
        return True


class FlowState:
    """What inspection remembers of one flow between its packets."""

    __slots__ = (
        "content",
        "crypto",
        "dns_messages",
        "in_packets",
        "in_stream",
        "out_done",
        "out_isn",
        "out_packets",
        "out_stream",
        "plain",
        "queries",
        "query",
        "quic_datagrams",
        "quic_dcid",
        "resolver",
    )

    def __init__(self, resolver: bool) -> None:
        self.resolver = resolver  # a DNS port on either side: every answer feeds the cache
        self.out_packets = self.in_packets = 0
        self.out_stream: Stream | None = None
        self.out_isn: int | None = None  # where the opener's stream starts, from its SYN
        self.in_stream: Stream | None = None
        self.out_done = False  # nothing more to learn from the opener's side
        self.quic_dcid: bytes | None = None
        self.crypto: CryptoStream | None = None
        self.quic_datagrams = 0
        self.dns_messages = 0
        self.queries: set[int] | None = None  # ids of DNS queries seen on a non-DNS port
        self.query: bytes | None = None  # a resolver flow's first query, parsed only if unanswered
        self.content: Content | None = None  # plaintext first bytes, for health/school evidence
        # The payload may be plaintext worth keeping for `content` (made at the first payload that
        # is, so that TLS and QUIC flows never pay for it); False once known to be encrypted.
        self.plain = not resolver


class Identify:
    """Per-flow inspection for identity, with the DNS answer cache it feeds and reads."""

    def __init__(self, config: IdentifyConfig | None = None) -> None:
        self.config = config or IdentifyConfig()
        self.dns_cache = DnsCache(max_entries=self.config.dns_cache_size)
        self.malformed = 0  # payloads a parser refused (counted, never fatal)

    # -- called by the flow table ------------------------------------------------------------

    def on_new_flow(self, flow: Flow, buf: bytes, l4: int, flags: int, outward: bool, ts: float) -> None:
        """A flow starts: the name its client was given for the address, and inspection state."""
        proto = flow.proto
        if proto not in (PROTO_TCP, PROTO_UDP):
            return
        resolver = flow.sport in DNS_PORTS or flow.dport in DNS_PORTS
        if not resolver:
            # A flow to a resolver is named by the question it carries, not by the resolver's name.
            name = self.dns_cache.lookup(flow.src, flow.dst, ts)
            if name is not None:
                flow.hostname = name
                flow.hostname_source = "dns"
        state = FlowState(resolver)
        if proto == PROTO_TCP and flags & TCP_SYN and outward and l4 + 8 <= len(buf):
            # The opener's SYN: its sequence number + 1 is where its stream starts.
            state.out_isn = (SEQ.unpack_from(buf, l4 + 4)[0] + 1) & 0xFFFFFFFF
        flow.inspect = state

    def on_payload(
        self, flow: Flow, outward: bool, buf: bytes, l4: int, pay: int, end: int, ts: float
    ) -> None:
        """A payload-carrying packet of a flow still under inspection."""
        state = flow.inspect
        if state is None:
            return
        payload = buf[pay:end]
        try:
            if flow.proto == PROTO_UDP:
                if state.resolver:  # most flows of a gateway, two packets each: the short way
                    self._dns_message(flow, state, outward, payload, ts)
                    return
                if state.plain:
                    self._keep(state, outward, None, payload)
                self._udp(flow, state, outward, payload, ts)
            else:
                seq = SEQ.unpack_from(buf, l4 + 4)[0]
                if state.plain:
                    self._keep(state, outward, seq, payload)
                self._tcp(flow, state, outward, seq, payload, ts)
        except MalformedPacket:
            self.malformed += 1
            self._give_up(flow, state, outward)

    def _keep(self, state: FlowState, outward: bool, seq: int | None, payload: bytes) -> None:
        """Keeps the payload for content detection, unless it opens a TLS stream."""
        content = state.content
        if content is None:
            if outward and seq is not None and looks_like_tls(payload):
                state.plain = False  # `_client_stream` reads the ClientHello; nothing to keep
                return
            content = state.content = Content(self.config.detect_bytes, self.config.payload_packets)
        content.feed(outward, seq, payload)

    def on_report(self, flow: Flow, final: bool) -> None:
        """A flow is about to be declared (it ended, or a long flow's periodic report).

        The evidence found in its first bytes goes to the flow; at its end, a resolver flow that
        never got an answer is named by its query, and the inspection state is dropped.
        """
        state = flow.inspect
        if state is None:
            return
        self._keep_evidence(flow, state)
        if not final:
            return
        flow.inspect = None
        if state.query is None or flow.hostname is not None:
            return
        try:
            first = read_answers(state.query)[2]
        except MalformedPacket:
            self.malformed += 1
            return
        if first is not None:
            # The flow to the resolver is named by what it asked first, as nDPI does.
            flow.hostname = first
            flow.hostname_source = "dns_query"

    # -- UDP: DNS answers, QUIC Initials ----------------------------------------------------------

    def _udp(self, flow: Flow, state: FlowState, outward: bool, payload: bytes, ts: float) -> None:
        """QUIC Initials, and DNS on a port that is not a resolver's (on_payload takes resolvers)."""
        if outward:
            state.out_packets += 1
            if not state.out_done:
                self._quic(flow, state, payload)
            if state.queries is None and looks_like_dns(payload):
                # DNS on an unusual port: remember the query, believe only the matching answer.
                ident, response, _first, _addresses = read_answers(payload)
                if not response:
                    state.queries = {ident}
        else:
            state.in_packets += 1
            if state.queries and looks_like_dns(payload):
                ident, response, first, addresses = read_answers(payload)
                if response and ident in state.queries:
                    self._learn(flow, first, addresses, ts)
        self._maybe_stop(flow, state)

    def _dns_message(self, flow: Flow, state: FlowState, outward: bool, payload: bytes, ts: float) -> None:
        state.dns_messages += 1
        if state.dns_messages > self.config.dns_messages:
            flow.inspect = None
            return
        if outward:
            # A query teaches nothing an answer will not repeat (its question): keep the first
            # one unparsed, for a flow that never gets an answer (on_flow_end).
            if state.query is None and flow.hostname is None:
                state.query = payload[:512]
            return
        # partial: the first fragment of a fragmented response ends mid-answers.
        _ident, response, first, addresses = read_answers(payload)
        if response:
            self._learn(flow, first, addresses, ts)
        elif flow.hostname is None and first is not None:
            # A query from the "server" side: the opener was guessed wrong; name it all the same.
            flow.hostname = first
            flow.hostname_source = "dns_query"

    def _learn(
        self, flow: Flow, question: str | None, addresses: list[tuple[bytes, str, int]], ts: float
    ) -> None:
        if addresses:
            self.dns_cache.add_all(flow.src, addresses, ts)  # the opener asked: the answer is for it
        if flow.hostname is None and question is not None:
            flow.hostname = question
            flow.hostname_source = "dns_query"

    def _quic(self, flow: Flow, state: FlowState, payload: bytes) -> None:
        state.quic_datagrams += 1
        if state.quic_datagrams > self.config.quic_datagrams:
            state.out_done = True
            return
        initials = parse_initials(payload, state.quic_dcid)
        if not initials:
            # QUIC sets the fixed bit (RFC 9000 17.2) in every packet, 0-RTT and short headers
            # included, which may come before the Initial we want: without it, this is not QUIC.
            if state.crypto is None and not (payload and payload[0] & 0x40):
                state.out_done = True
            return
        state.content = None  # QUIC: encrypted beyond its Initials
        state.plain = False
        for initial in initials:
            if state.quic_dcid is None:
                state.quic_dcid = initial.dcid
            if state.crypto is None:
                state.crypto = CryptoStream()
            for offset, data in initial.crypto:
                state.crypto.add(offset, data)
        hello = parse_client_hello(state.crypto.contiguous(), names_only=True) if state.crypto else None
        if hello is not None:
            self._named(flow, hello.sni, "quic_sni", hello.ech)
            state.out_done = True

    # -- TCP: TLS ClientHello, HTTP Host, DNS over TCP -------------------------------------------

    def _tcp(self, flow: Flow, state: FlowState, outward: bool, seq: int, payload: bytes, ts: float) -> None:
        dns = state.resolver
        if outward:
            state.out_packets += 1
            if state.out_done:
                self._maybe_stop(flow, state)
                return
            stream = state.out_stream
            if stream is None:
                if not dns and (state.out_isn is None or state.out_isn == seq):
                    # The stream's first segment: most ClientHellos and requests fit in it,
                    # so try it as it is before paying for a reassembly buffer.
                    self._client_stream(flow, state, payload)
                    if state.out_done:
                        self._maybe_stop(flow, state)
                        return
                stream = state.out_stream = Stream(self.config.stream_bytes, state.out_isn)
            if stream.add(seq, payload) and not dns:
                self._client_stream(flow, state, bytes(stream.data))
        else:
            state.in_packets += 1
            if dns:
                stream = state.in_stream
                if stream is None:
                    stream = state.in_stream = Stream(self.config.stream_bytes)
                if stream.add(seq, payload):
                    self._dns_tcp(flow, state, stream, ts)
        self._maybe_stop(flow, state)

    def _client_stream(self, flow: Flow, state: FlowState, data: bytes) -> None:
        if looks_like_tls(data):
            state.content = None  # encrypted from here on: nothing to read in the payload
            state.plain = False
            hello = parse_tls_stream(data, names_only=True)
            if hello is not None:
                self._named(flow, hello.sni, "tls_sni", hello.ech)
                state.out_done = True
        elif looks_like_http(data):
            host = http_host(data)
            if host is not None:
                # "" is a complete request without a usable name (none, or an address literal).
                self._named(flow, host or None, "http_host", False)
                state.out_done = True
        elif len(data) >= 16:
            state.out_done = True  # neither: nothing we read on this side

    def _dns_tcp(self, flow: Flow, state: FlowState, stream: Stream, ts: float) -> None:
        data = bytes(stream.data)
        offset = 0
        while offset < len(data) and state.dns_messages < self.config.dns_messages:
            message, used = parse_dns_tcp(data[offset:])
            if message is None:
                break
            state.dns_messages += 1
            offset += used
            if message.response:
                first = message.questions[0][0] if message.questions else None
                self._learn(flow, first, address_names(message), ts)
        if offset:
            del stream.data[:offset]
            stream.base = ((stream.base or 0) + offset) & 0xFFFFFFFF

    # -- bookkeeping ---------------------------------------------------------------------------

    def _named(self, flow: Flow, name: str | None, source: str, ech: bool) -> None:
        if ech:
            flow.ech = True
        if name is not None and SOURCE_RANK[source] >= SOURCE_RANK[flow.hostname_source]:
            flow.hostname = name
            flow.hostname_source = source

    def _maybe_stop(self, flow: Flow, state: FlowState) -> None:
        limit = self.config.payload_packets
        out_over = state.out_done or state.out_packets >= limit
        if (
            out_over
            and (state.in_packets >= limit or state.in_stream is None)
            and (state.content is None or state.content.complete)
            and not state.resolver
            and not state.queries
        ):
            # The inspection state goes now: what its bytes prove must stay with the flow.
            self._keep_evidence(flow, state)
            flow.inspect = None

    def _keep_evidence(self, flow: Flow, state: FlowState) -> None:
        if state.content is not None:
            before = state.content.malformed
            evidence = state.content.evidence()
            self.malformed += state.content.malformed - before
            if evidence:
                flow.evidence = evidence

    def _give_up(self, flow: Flow, state: FlowState, outward: bool) -> None:
        if outward:
            state.out_done = True
        self._maybe_stop(flow, state)
