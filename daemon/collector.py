"""The flow collector: NetFlow v5/v9 and IPFIX over UDP from listed exporters, declared as flows.

A gateway that cannot be mirrored can export flow records instead. `FlowCollector` receives them on
`listen`, refuses datagrams from addresses not in `exporters` (counted, never decoded), decodes the
others (`netflow.Decoder`) and hands each record to `on_flow` as a `Flow`, so that the pipeline
declares it as it declares a captured flow (enrichment, policy, metrics, evidence).

Records are not paired: an exporter's uni-directional record becomes one flow with one direction's
counters. Its orientation is decided from the two endpoints alone, never from which one the record
names first (`opener_is_dst`), so that the two records of a connection give two declarations with
the same 5-tuple, one with the `out` counters and one with the `in` counters: the flow table's
guess for a flow seen from the middle (the side on a server port is the responder), and where the
ports do not decide, the internal side as the client. A biflow record (RFC 5103) gives one flow
with both directions' counters.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from douane.daemon.dissect import MalformedPacket
from douane.daemon.flows import (
    DEFAULT_INTERNAL,
    SERVER_PORTS,
    Flow,
    InternalNetworks,
    _server_side,  # the flow table's own guess, shared on purpose
)
from douane.daemon.netflow import Decoder, DecoderConfig, ExporterStats, FlowRecord

log = structlog.get_logger("douane.collector")

MAX_DATAGRAM = 65_535
POLL_SECONDS = 0.5  # the receive loop's wake-up: held data expiry and the caller's on_idle
# Datagrams read per wake-up of a loop shared with live capture: a flood of export datagrams
# cannot hold the capture ring back longer than this (the socket stays readable, the next wake-up
# reads on). A full receive buffer loses datagrams: counted by the kernel (SO_RXQ_OVFL) and here.
DRAIN_BUDGET = 256
# socket(7) SO_RXQ_OVFL: each datagram received comes with the number of datagrams the kernel has
# dropped on this socket so far (its receive buffer full). Python names no constant for it; 40 is
# its value on Linux's common architectures (asm-generic/socket.h).
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_DROPS = struct.Struct("=I")
_ANCILLARY = socket.CMSG_SPACE(_DROPS.size)
# On SIGTERM, what the kernel already holds is declared before the socket closes: at most this
# many datagrams (a buffer of net.core.rmem_max = 8 MiB holds about 6,000 of 1,400 bytes).
FINAL_DRAIN = 65_536


@dataclass(frozen=True)
class CollectorConfig:
    """The collector (YAML section `capture.collector`)."""

    listen: str = "0.0.0.0:2055"  # IANA's NetFlow port; IPFIX's own is 4739
    exporters: tuple[str, ...] = ()  # addresses allowed to export; none listed: none accepted
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    internal: tuple[str, ...] = DEFAULT_INTERNAL  # networks.internal, for the flow's direction


def normalise_address(text: str) -> str:
    """An exporter address as one canonical text (an IPv4-mapped IPv6 address as IPv4)."""
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def opener_is_dst(src: bytes, sport: int, dst: bytes, dport: int, internal: InternalNetworks) -> bool:
    """Whether a record's destination side is the one that opened the connection.

    The answer depends on the two endpoints, not on their order, so that both one-way records of a
    connection agree on the flow's 5-tuple:

    1. a side on a server port (flows.SERVER_PORTS, or below 1024) facing one that is not is the
       server, as the flow table decides for a flow seen from the middle;
    2. otherwise (two high ports, or two server ports) the internal side is the client: what
       leaves the institution is what douane reports, and its clients open most such connections
       (video calls, VPNs, STUN, games);
    3. between two internal or two external hosts, the higher port is the client's (ephemeral
       ports sit at the top of the range: Linux 32768-60999, IANA 49152-65535);
    4. on equal ports, the lower address: arbitrary, but stable.

    The flow table follows the first packet where 1 does not apply, so a connection opened from
    outside to an internal host's high port is declared the other way round by the collector (same
    counters, each on the other side). Known and accepted: a flow record does not say who began.
    """
    if _server_side(sport, dport):
        return True
    if _server_side(dport, sport):
        return False
    src_inside = src in internal
    if src_inside != (dst in internal):
        return not src_inside
    if sport != dport:
        return dport > sport
    return dst < src


# A flow's direction from whether its source and its destination are internal (flows.direction_of).
DIRECTIONS = {(True, True): "internal", (True, False): "outbound", (False, True): "inbound",
              (False, False): "external"}


def record_to_flow(record: FlowRecord, internal: InternalNetworks) -> Flow:
    """A decoded record as a douane `Flow`, oriented from the side that opened the connection.

    One per record, the collector's hot path: `opener_is_dst` and `direction_of` are inlined on
    one membership test per address (tests/daemon/test_collector.py compares the flows).
    """
    (proto, src, sport, dst, dport, out_packets, out_bytes, in_packets, in_bytes, first, last,
     _flags, _direction, sampling, hostname, hostname_source) = record
    answers = internal.answers  # `in internal`, without its call when the answer is known
    src_inside = answers.get(src)
    if src_inside is None:
        src_inside = src in internal
    dst_inside = answers.get(dst)
    if dst_inside is None:
        dst_inside = dst in internal
    # opener_is_dst: a server port facing a port that is not one, else the internal side, else
    # the higher port, else the lower address opened it. RFC 5103 makes a biflow's source the
    # initiator, but exporters that do not track it order the two sides their own way (softflowd
    # -b does): biflows are oriented like one-way records.
    src_server = sport < 1024 or sport in SERVER_PORTS
    if src_server != (dport < 1024 or dport in SERVER_PORTS):
        swap = src_server
    elif src_inside != dst_inside:
        swap = dst_inside
    elif sport != dport:
        swap = dport > sport
    else:
        swap = dst < src
    if swap:
        src, sport, dst, dport = dst, dport, src, sport
        out_packets, out_bytes, in_packets, in_bytes = in_packets, in_bytes, out_packets, out_bytes
        src_inside, dst_inside = dst_inside, src_inside
    flow = Flow((0, proto, src, sport, dst, dport), 0, proto, src, sport, dst, dport, first,
                DIRECTIONS[src_inside, dst_inside])
    flow.last = last
    flow.packets_out = out_packets
    flow.bytes_out = out_bytes
    flow.packets_in = in_packets
    flow.bytes_in = in_bytes
    flow.sampling = sampling
    # Cleaned by the decoder (netflow.record_name): never a raw exporter string.
    flow.hostname = hostname
    flow.hostname_source = hostname_source
    flow.end_reason = "exported"
    return flow


class FlowCollector:
    """UDP receiver of export datagrams; a component (STYLE.md): no I/O before `start()`."""

    def __init__(self, config: CollectorConfig, on_flow: Callable[[Flow], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.decoder = Decoder(config.decoder)
        self.allowed: frozenset[str] = frozenset()
        self.refused = 0  # datagrams from addresses not listed
        self.errors = 0  # datagrams that broke something other than the decoder's contract
        # Datagrams the kernel dropped, its receive buffer full (over every socket this collector
        # opened); None where the kernel cannot say (not Linux), so that no false zero is exported.
        self.dropped: int | None = None
        self._dropped_before = 0  # the sockets closed before this one
        self._on_flow = on_flow
        self._clock = clock
        self._internal = InternalNetworks(config.internal)
        self._sock: socket.socket | None = None
        self.allow(config.exporters)

    def allow(self, exporters: tuple[str, ...]) -> None:
        """The exporters to accept from now on (at start, and on SIGHUP)."""
        self.allowed = frozenset(normalise_address(a) for a in exporters)
        for exporter in sorted(self.allowed):
            self.decoder.exporter_stats(exporter)  # every listed exporter's series from zero

    @property
    def address(self) -> tuple[str, int]:
        """Where the socket listens (the real port when `listen` asked for port 0)."""
        if self._sock is None:
            raise RuntimeError("collector not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind the UDP socket; raises OSError (address in use, permission)."""
        host, _, port = self.config.listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            if sys.platform == "linux":
                sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
                self.dropped = self._dropped_before
            sock.bind((host, int(port)))
            # Read only when poll() says so (here or in the capture loop): never blocks the loop.
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def fileno(self) -> int:
        """The UDP socket's descriptor, for a poll loop shared with capture."""
        if self._sock is None:
            raise RuntimeError("collector not started")
        return self._sock.fileno()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            # The kernel's count is per socket: a new one (restart) counts on from here.
            self._dropped_before = self.dropped or 0

    def handle(self, data: bytes, exporter: str, now: float) -> int:
        """One datagram: decoded and declared if its exporter is listed. Returns the flows given."""
        if exporter not in self.allowed:
            self.refused += 1
            return 0
        try:
            records = self.decoder.decode(data, exporter, now)
        except MalformedPacket:
            return 0  # counted per exporter by the decoder
        except Exception:  # noqa: BLE001 -- last resort (STYLE.md): never die of input; logged
            self._failed(exporter)
            return 0
        if not records:
            return 0
        internal = self._internal
        declared = 0
        for record in records:
            try:
                self._on_flow(record_to_flow(record, internal))
            except Exception:  # noqa: BLE001 -- a failed record (logged) loses no other
                self._failed(exporter)
            else:
                declared += 1
        return declared

    def _failed(self, exporter: str | None, event: str = "collector_datagram_failed") -> None:
        self.errors += 1
        if self.errors <= 10 or self.errors % 1000 == 0:
            log.exception(event, exporter=exporter)

    def drain(self, budget: int = DRAIN_BUDGET) -> int:
        """Every datagram waiting on the socket, `budget` at most, handled. Returns how many."""
        sock = self._sock
        if sock is None:
            return 0
        now = self._clock()
        received = 0
        while received < budget:
            try:
                data, ancillary, _flags, peer = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # not the datagram's doing (ENOMEM, a closed socket): logged, retried later
                self._failed(None, "collector_receive_failed")
                break
            received += 1
            # Present only once the kernel has dropped something: the count up to this datagram.
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= _DROPS.size:
                    self.dropped = self._dropped_before + _DROPS.unpack_from(value)[0]
            self.handle(data, normalise_address(peer[0]), now)
        return received

    def expire(self, now: float) -> None:
        """Data sets held too long for their template are dropped (and counted)."""
        self.decoder.expire(now)

    def serve(self, stop: threading.Event,
              on_idle: Callable[[float], None] | None = None) -> None:
        """Receive until `stop` is set; `on_idle(now)` runs at least every POLL_SECONDS."""
        if self._sock is None:
            raise RuntimeError("collector not started")
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        next_idle = 0.0
        while not stop.is_set() and self._sock is not None:
            if poller.poll(POLL_SECONDS * 1000):
                self.drain()
            now = self._clock()
            if now >= next_idle:
                self.expire(now)
                if on_idle is not None:
                    on_idle(now)
                next_idle = now + POLL_SECONDS


class CollectorMetrics(Collector):
    """`douane_collector_*{exporter}`: read at scrape time from the collector's plain integers.

    The exporter label is an address from the allow-list: only listed exporters reach the decoder.
    """

    FAMILIES = (
        ("datagrams", "Export datagrams received and decoded from the exporter."),
        ("records", "Flow records decoded from the exporter."),
        ("templates", "Templates and options templates received from the exporter."),
        ("sequence_gaps", "Export packets (NetFlow v9) or records (v5, IPFIX) lost, by sequence."),
        ("unknown_template", "Data sets dropped: their template did not come in time."),
        ("malformed_datagrams", "Datagrams cut short or impossible, skipped."),
    )

    def __init__(self, collector: FlowCollector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, ExporterStats] = dict(self._collector.decoder.stats)
        for name, text in self.FAMILIES:
            family = CounterMetricFamily(f"douane_collector_{name}", text, labels=["exporter"])
            attribute = "malformed" if name == "malformed_datagrams" else name
            for exporter, values in sorted(stats.items()):
                family.add_metric([exporter], getattr(values, attribute))
            yield family
        yield CounterMetricFamily(
            "douane_collector_refused_datagrams",
            "Datagrams from addresses not in capture.collector.exporters, ignored.",
            value=self._collector.refused,
        )
        if self._collector.dropped is not None:
            yield CounterMetricFamily(
                "douane_collector_dropped_datagrams",
                "Export datagrams the kernel dropped, douane's receive buffer full (known at the next "
                "datagram received).",
                value=self._collector.dropped,
            )
        yield GaugeMetricFamily(
            "douane_collector_templates_active", "Templates held, over all exporters.",
            value=self._collector.decoder.template_count(),
        )
