"""Names for collected flows from the DNS answers that live capture saw in the same process.

A firewall's flow records carry addresses, rarely names. When `douane run` also captures (if only
DNS: `capture.bpf: "port 53"`), its `DnsCache` knows which name each client was given for each
address, and a collected flow is named from it exactly as `Identify.on_new_flow` names a captured
one: the client's own answer, else any client's, `hostname_source: "dns"`. A name the exporter sent
(`tls_sni`, `http_host`) ranks higher (hostname.SOURCE_RANK) and is never replaced.

One difference with capture: a captured flow is named once, at its first packet, and keeps its name
however long it lasts; an exporter reports a long connection again every active timeout, by which
time the DNS answer may have expired (TTLs are clamped to at least 60 s, and active timeouts are
often 60 s). So the name each connection was given is remembered by 5-tuple, a bounded table with
the oldest written entry going first, and a later record of the same connection keeps it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from douane.daemon.dissect import PROTO_TCP, PROTO_UDP
from douane.daemon.dnscache import DnsCache
from douane.daemon.flows import Flow
from douane.daemon.hostname import SOURCE_RANK
from douane.daemon.identify import DNS_PORTS

DNS_RANK = SOURCE_RANK["dns"]


class DnsNames:
    """Wraps the collector's `on_flow`: names each flow from the DNS cache, then passes it on.

    Args:
        cache: the live capture's DNS answer cache (`Identify.dns_cache`), read only here.
        on_flow: where named flows go (the pipeline's `on_close`).
        connections: connections whose name is remembered for their later records, at most.
        clock: the wall clock, for records whose exporter's clock runs ahead.
    """

    def __init__(self, cache: DnsCache, on_flow: Callable[[Flow], None], connections: int = 65_536,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.named = 0  # flows named from the DNS cache (or their connection's earlier record)
        self._on_flow = on_flow
        self._max = connections
        self._clock = clock
        self._connections: OrderedDict[tuple[object, ...], str] = OrderedDict()

    def __call__(self, flow: Flow) -> None:
        self.name(flow)
        self._on_flow(flow)

    def name(self, flow: Flow) -> None:
        """Give `flow` the name its client was given for its destination, unless it has a better one."""
        # As Identify.on_new_flow: TCP and UDP only, and a flow to a resolver is named by its
        # question (by the exporter, if at all), not by the resolver's own name.
        if flow.proto not in (PROTO_TCP, PROTO_UDP) or SOURCE_RANK[flow.hostname_source] >= DNS_RANK:
            return
        if flow.sport in DNS_PORTS or flow.dport in DNS_PORTS:
            return
        # The name the client had when the connection began; the wall clock when the exporter's
        # runs ahead of it. The cache keeps no time of learning, only of expiry, so a small skew
        # the other way (a record's start just before the answer was captured) still finds it.
        at = min(flow.first, self._clock())
        name = self.cache.lookup(flow.src, flow.dst, at)
        connections = self._connections
        key = flow.key
        if name is None:
            name = connections.get(key)
            if name is None:
                return
        else:
            connections[key] = name
            connections.move_to_end(key)
            if len(connections) > self._max:
                connections.popitem(last=False)
        flow.hostname = name
        flow.hostname_source = "dns"
        self.named += 1

    def __len__(self) -> int:
        """Connections whose name is remembered."""
        return len(self._connections)
