"""The flow table: bidirectional flows keyed by VLAN and 5-tuple, with timeouts and bounded size.

`FlowTable.ingest` is the per-packet loop shared by every packet source (pcap replay, live capture):
it dissects each frame, finds or creates the flow and updates its counters. Everything else happens
per flow: when a flow ends (TCP FIN/RST, idle timeout, eviction, end of input) it is handed to
`on_close`; a long flow is handed to `on_update` every `active_timeout` seconds so that metrics stay
live. Timeouts run on packet time, so a replay behaves as the live capture did.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from douane.daemon.dissect import PROTO_TCP, MalformedPacket, Packet, dissect
from douane.daemon.pcapfile import Batch

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

# Ports where a server listens: a flow whose first packet comes *from* one of these (and goes to a
# port that is not one) was opened by the other side; we saw its middle, not its start.
SERVER_PORTS = frozenset(
    {
        104, 389, 443, 636, 853, 993, 995, 1433, 1521, 1883, 2049, 2575, 3268, 3306, 3389,
        4242, 5060, 5061, 5222, 5432, 5671, 5672, 6379, 6514, 8080, 8443, 8883, 9000, 9200,
        11112, 27017,
    }
)

DEFAULT_INTERNAL = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
    "100.64.0.0/10", "fc00::/7", "fe80::/10", "::1/128",
)

CloseReason = str  # "fin", "rst", "idle", "evicted", "end" (end of input / shutdown), "new_syn"


@dataclass(frozen=True)
class FlowConfig:
    """Flow table settings (YAML section `flows`)."""

    idle_timeout: float = 60.0  # seconds without a packet before a flow ends
    active_timeout: float = 300.0  # a longer flow is reported every this many seconds
    tcp_close_grace: float = 2.0  # after FIN both ways or RST: wait for the last ACKs
    max_flows: int = 262_144  # beyond this the oldest idle flow is evicted (and counted)
    internal: tuple[str, ...] = DEFAULT_INTERNAL  # networks.internal


class Flow:
    """One bidirectional flow, seen from the side that opened it (`src`)."""

    __slots__ = (
        "bytes_in", "bytes_out", "closing", "direction", "dport", "dst", "ech", "end_reason",
        "evidence", "fin_in", "fin_out", "first", "flagged", "flags_in", "flags_out", "hostname",
        "hostname_source", "inspect", "key", "last", "packets_in", "packets_out", "proto",
        "reported", "rkey", "sampling", "sport", "src", "vlan",
    )

    def __init__(
        self, key: tuple[object, ...], vlan: int, proto: int, src: bytes, sport: int, dst: bytes,
        dport: int, ts: float, direction: str,
    ) -> None:
        self.key = key  # (vlan, proto, src, sport, dst, dport) as the opener sent it
        self.rkey = (vlan, proto, dst, dport, src, sport)  # the same flow, as the other side sends
        self.vlan = vlan
        self.proto = proto
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.first = ts
        self.last = ts
        self.packets_out = self.bytes_out = self.packets_in = self.bytes_in = 0
        # 1 in N packets counted, the counters scaled back up by N (flow records from a sampling
        # exporter); 1: every packet counted, the counters exact (capture always).
        self.sampling = 1
        self.flags_out = self.flags_in = 0
        self.fin_out = self.fin_in = False
        self.closing = False
        self.direction = direction
        self.end_reason: CloseReason = ""
        # Counters as last handed to on_update/on_close, so sinks can add only the difference.
        self.reported = (0, 0, 0, 0)
        self.flagged = False  # counted once in douane_flagged_flows_total
        # Identity, filled by inspection (identify.py); `inspect` is its per-flow state, None
        # once there is nothing more to learn, so the packet loop skips the flow for good.
        self.hostname: str | None = None
        self.hostname_source: str | None = None
        self.ech = False
        self.inspect: Any = None
        # Data categories found in the payload (content.py): category -> evidence names.
        self.evidence: dict[str, list[str]] | None = None


@dataclass
class TableStats:
    """Per-packet counters, kept as plain integers (STYLE.md) and read by the metrics collector."""

    packets: int = 0
    ignored: int = 0  # frames with no IP packet we account (ARP, LLDP, unknown link types)
    dropped: dict[str, int] = field(default_factory=lambda: {"malformed": 0, "truncated": 0})
    malformed_detail: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    flows_created: int = 0


class InternalNetworks:
    """Membership test for the configured internal networks, on raw 4/16-byte addresses."""

    CACHE = 65536  # remembered answers; internal hosts recur in almost every flow

    def __init__(self, networks: Iterable[str]) -> None:
        self._v4: list[tuple[int, int]] = []
        self._v6: list[tuple[int, int]] = []
        # Remembered answers by address, read directly by hot paths (collector.record_to_flow)
        # before they fall back to `in`.
        self.answers: dict[bytes, bool] = {}
        for text in networks:
            net = ipaddress.ip_network(text, strict=False)
            target = self._v4 if net.version == 4 else self._v6
            target.append((int(net.network_address), int(net.netmask)))

    def __contains__(self, addr: bytes) -> bool:
        known = self.answers.get(addr)
        if known is not None:
            return known
        value = int.from_bytes(addr, "big")
        nets = self._v4 if len(addr) == 4 else self._v6
        inside = any(value & mask == net for net, mask in nets)
        if len(self.answers) >= self.CACHE:
            self.answers.clear()  # bounded; refilling costs one flow's worth of look-ups per address
        self.answers[addr] = inside
        return inside


def direction_of(internal: InternalNetworks, src: bytes, dst: bytes) -> str:
    """`outbound`, `inbound`, `internal` or `external`, as DESIGN.md defines them."""
    src_in = src in internal
    dst_in = dst in internal
    if src_in:
        return "internal" if dst_in else "outbound"
    return "inbound" if dst_in else "external"


FlowCallback = Callable[[Flow], None]


class Inspector(Protocol):
    """Per-flow payload inspection (identify.py); the table calls it, nothing else does."""

    def on_new_flow(
        self, flow: Flow, buf: bytes, l4: int, flags: int, outward: bool, ts: float
    ) -> None: ...

    def on_payload(
        self, flow: Flow, outward: bool, buf: bytes, l4: int, pay: int, end: int, ts: float
    ) -> None: ...

    def on_report(self, flow: Flow, final: bool) -> None: ...


class FlowTable:
    """Bidirectional flows with idle/active timeouts and a bounded size."""

    def __init__(
        self, config: FlowConfig, on_close: FlowCallback, on_update: FlowCallback,
        inspector: Inspector | None = None,
    ) -> None:
        self.config = config
        self._inspector = inspector
        self.stats = TableStats()
        self._on_close = on_close
        self._on_update = on_update
        self._flows: dict[tuple[object, ...], Flow] = {}  # by Flow.key
        # Both directions of every flow, so a packet finds its flow and its side in one look-up
        # without ordering addresses: (flow, True) for the opener's packets, (flow, False) back.
        self._index: dict[tuple[object, ...], tuple[Flow, bool]] = {}
        self._internal = InternalNetworks(config.internal)
        self._fragments: dict[tuple[object, ...], int] = {}
        # Deadline queues, appended in (nearly) time order so the due entries sit at the left end.
        # A re-queued idle entry may land behind later deadlines: that only delays a close by less
        # than one idle timeout (the record keeps its true last-packet time), never miscounts.
        # An entry whose flow has ended or moved on is dropped or re-queued when it comes due.
        self._idle: deque[tuple[float, Flow]] = deque()
        self._active: deque[tuple[float, Flow]] = deque()
        self._closing: deque[tuple[float, Flow]] = deque()
        self._next_sweep = 0.0
        self.now = 0.0

    def __len__(self) -> int:
        return len(self._flows)

    def ingest(self, frames: Iterable[tuple[float, int, bytes, int]]) -> None:
        """Account frames given one by one as (timestamp, link type, bytes, wire length)."""
        self.ingest_batches((data, [(ts, lt, 0, len(data), wl)]) for ts, lt, data, wl in frames)

    def ingest_batches(self, batches: Iterable[Batch]) -> None:
        """Account every frame of every batch; the per-packet loop, kept flat on purpose."""
        index = self._index
        stats = self.stats
        dropped = stats.dropped
        detail = stats.malformed_detail
        fragments = self._fragments
        new_flow = self._new_flow
        tcp_end = self._tcp_end
        # Only an inspector sets flow.inspect, so without one the call below never happens.
        on_payload = self._inspector.on_payload if self._inspector is not None else _no_inspection
        next_sweep = self._next_sweep
        packets = 0
        ts = self.now
        try:
            for buf, records in batches:
                for ts, linktype, start, stop, wirelen in records:
                    packets += 1
                    if ts >= next_sweep:
                        self.now = ts
                        self._expire(ts)
                        next_sweep = ts + 1.0
                    try:
                        pkt = dissect(linktype, buf, start, stop, wirelen, fragments)
                    except MalformedPacket as exc:
                        dropped[exc.reason] += 1
                        detail[exc.detail] = detail.get(exc.detail, 0) + 1
                        continue
                    if pkt is None:
                        stats.ignored += 1
                        continue
                    vlan, proto, s, d, sp, dp, size, flags, pay, end, l4 = pkt
                    entry = index.get((vlan, proto, s, sp, d, dp))
                    # flags is 0 for every protocol but TCP, so TCP's tests cost nothing elsewhere.
                    if entry is None or (
                        flags & TCP_SYN and not flags & TCP_ACK and entry[0].closing
                    ):
                        entry = new_flow(pkt, buf, ts, entry)
                    flow, outward = entry
                    if outward:
                        flow.packets_out += 1
                        flow.bytes_out += size
                        if flags:
                            flow.flags_out |= flags
                    else:
                        flow.packets_in += 1
                        flow.bytes_in += size
                        if flags:
                            flow.flags_in |= flags
                    flow.last = ts
                    if flags & (TCP_FIN | TCP_RST):
                        tcp_end(flow, outward, flags, ts)
                    if pay < end and flow.inspect is not None:
                        on_payload(flow, outward, buf, l4, pay, end, ts)
                # Counted per batch, not at the end: a live capture's loop never ends.
                stats.packets += packets
                packets = 0
        finally:
            stats.packets += packets
            self._next_sweep = next_sweep
            self.now = ts

    def _tcp_end(self, flow: Flow, outward: bool, flags: int, ts: float) -> None:
        """FIN or RST seen: after FIN both ways, or RST, the flow ends once the grace has passed."""
        if flags & TCP_FIN:
            if outward:
                flow.fin_out = True
            else:
                flow.fin_in = True
        if not flow.closing and (flags & TCP_RST or (flow.fin_out and flow.fin_in)):
            flow.closing = True
            flow.end_reason = "rst" if flags & TCP_RST else "fin"
            self._closing.append((ts + self.config.tcp_close_grace, flow))

    def _new_flow(
        self, pkt: Packet, buf: bytes, ts: float, old: tuple[Flow, bool] | None,
    ) -> tuple[Flow, bool]:
        if old is not None:
            # A fresh SYN on a closed 5-tuple: the port was reused; the old flow is over.
            self._close(old[0], old[0].end_reason or "new_syn")
        if len(self._flows) >= self.config.max_flows:
            self._evict_one()
        vlan, proto, s, d, sp, dp, _size, flags, _pay, _end, l4 = pkt
        if proto == PROTO_TCP:
            syn = flags & (TCP_SYN | TCP_ACK)
            # SYN: the sender opened it. SYN-ACK: the receiver did. Otherwise guess from ports.
            swap = syn == TCP_SYN | TCP_ACK or (syn != TCP_SYN and _server_side(sp, dp))
        else:
            swap = _server_side(sp, dp)
        if swap:
            s, sp, d, dp = d, dp, s, sp
        key = (vlan, proto, s, sp, d, dp)
        flow = Flow(key, vlan, proto, s, sp, d, dp, ts, direction_of(self._internal, s, d))
        self._flows[key] = flow
        index = self._index
        back = (flow, False)
        index[flow.rkey] = back
        # A flow from an address and port to themselves has one key: all its packets are "out".
        index[key] = forth = (flow, True)
        self.stats.flows_created += 1
        self._idle.append((ts + self.config.idle_timeout, flow))
        self._active.append((ts + self.config.active_timeout, flow))
        entry = back if swap and flow.rkey != key else forth
        if self._inspector is not None:
            self._inspector.on_new_flow(flow, buf, l4, flags, entry[1], ts)
        return entry

    def _close(self, flow: Flow, reason: CloseReason) -> None:
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
            index = self._index
            del index[flow.key]
            if flow.rkey in index and index[flow.rkey][0] is flow:
                del index[flow.rkey]
        flow.end_reason = reason
        if flow.inspect is not None and self._inspector is not None:
            self._inspector.on_report(flow, True)
        self._on_close(flow)

    def _evict_one(self) -> None:
        """Make room: end the flow that has waited longest for its idle deadline."""
        flows = self._flows
        for queue in (self._closing, self._idle):
            while queue:
                _deadline, flow = queue.popleft()
                if flows.get(flow.key) is flow:
                    self.stats.evictions += 1
                    self._close(flow, "evicted")
                    return

    def _expire(self, now: float) -> None:
        flows = self._flows
        idle = self.config.idle_timeout
        queue = self._closing
        while queue and queue[0][0] <= now:
            _deadline, flow = queue.popleft()
            if flows.get(flow.key) is flow:
                self._close(flow, flow.end_reason)
        queue = self._idle
        while queue and queue[0][0] <= now:
            _deadline, flow = queue.popleft()
            if flows.get(flow.key) is not flow:
                continue
            if flow.last + idle <= now:
                self._close(flow, "idle")
            else:
                queue.append((flow.last + idle, flow))
        queue = self._active
        active = self.config.active_timeout
        while queue and queue[0][0] <= now:
            deadline, flow = queue.popleft()
            if flows.get(flow.key) is flow:
                if flow.inspect is not None and self._inspector is not None:
                    self._inspector.on_report(flow, False)
                self._on_update(flow)
                queue.append((deadline + active, flow))

    def tick(self, now: float) -> None:
        """Time passes without packets (live capture): flows time out all the same."""
        if now > self.now:
            self.now = now
            self._expire(now)
            self._next_sweep = now + 1.0

    def flush(self) -> None:
        """End every flow (end of input, shutdown): each goes to on_close once."""
        self._expire(self.now)
        for flow in list(self._flows.values()):
            self._close(flow, flow.end_reason if flow.closing else "end")
        self._idle.clear()
        self._active.clear()
        self._closing.clear()


def _no_inspection(
    flow: Flow, outward: bool, buf: bytes, l4: int, pay: int, end: int, ts: float
) -> None:
    return None


def _server_side(sport: int, dport: int) -> bool:
    """True when the packet's *source* port looks like the server's and the destination's does not."""
    src_server = sport in SERVER_PORTS or sport < 1024
    dst_server = dport in SERVER_PORTS or dport < 1024
    return src_server and not dst_server
