"""Prometheus metrics: names and labels from DESIGN.md, one registry built by the caller.

Traffic counters move once per flow report (close, or every active timeout), never per packet. The
per-packet counters live as plain integers in the flow table and the capture source; a collector reads
them at scrape time (STYLE.md: `labels().inc()` per packet costs ten times a dict update).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from douane.daemon import __version__

UNKNOWN = "unknown"
OTHER = "other"  # a provider the registry does not list (geo/providers.py)
DATA_CATEGORIES = ("health", "school", "personal", UNKNOWN)
JURISDICTIONS = ("eu", "us", "cn", "ru", "third", UNKNOWN)
LOCATION_ZONES = ("eea", "adequate", "third", UNKNOWN)
DROP_REASONS = ("kernel", "queue", "malformed", "truncated")
RELOAD_RESULTS = ("success", "failure")
TRAFFIC_LABELS = ("data_category", "jurisdiction", "location_zone", "location_country", "provider")
FLAGGED_LABELS = ("severity", "data_category", "jurisdiction", "provider", "rule")

_COUNTRY = re.compile(r"[A-Z]{2}")


def bounded(value: str | None, allowed: Iterable[str]) -> str:
    """A label value from a closed set; anything else is `unknown`, so cardinality stays bounded."""
    return value if value is not None and value in allowed else UNKNOWN


def country_label(code: str | None) -> str:
    """An ISO 3166 alpha-2 code, or `unknown`: at most 677 values whatever the database says."""
    return code if code is not None and _COUNTRY.fullmatch(code) else UNKNOWN


@dataclass(frozen=True)
class GeoDatabaseStatus:
    """What the geo collector needs to know of one database."""

    name: str
    build_timestamp: float | None


class DaemonCollector(Collector):
    """Exposes counters owned by other components (plain integers) at scrape time."""

    def __init__(
        self,
        table_stats: Callable[[], tuple[int, dict[str, int], int, int, int]],
        sources: Callable[[], dict[str, int]],
        dns_cache_entries: Callable[[], int],
        geo_databases: Callable[[], list[GeoDatabaseStatus]],
    ) -> None:
        self._table_stats = table_stats
        self._sources = sources
        self._dns = dns_cache_entries
        self._geo = geo_databases

    def collect(self) -> Iterator[Metric]:
        ignored, dropped, active, evictions, created = self._table_stats()
        packets = CounterMetricFamily(
            "douane_packets", "Packets read from each capture source.", labels=["source"]
        )
        for source, count in self._sources().items():
            packets.add_metric([source], count)
        yield packets
        drops = CounterMetricFamily(
            "douane_packets_dropped",
            "Packets not accounted, by reason (kernel/queue: never seen; malformed/truncated: "
            "headers impossible or cut short).",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            drops.add_metric([reason], dropped.get(reason, 0))
        yield drops
        yield CounterMetricFamily(
            "douane_packets_ignored",
            "Frames that carry no IP packet douane accounts (ARP, LLDP, unknown link types).",
            value=ignored,
        )
        yield GaugeMetricFamily("douane_flows_active", "Flows in the flow table.", value=active)
        yield CounterMetricFamily(
            "douane_flows_created", "Flows created in the flow table.", value=created
        )
        yield CounterMetricFamily(
            "douane_flow_table_evictions",
            "Flows ended early because the flow table was full.",
            value=evictions,
        )
        yield GaugeMetricFamily(
            "douane_dns_cache_entries", "Entries in the DNS answer cache.", value=self._dns()
        )
        build = GaugeMetricFamily(
            "douane_geo_database_build_timestamp_seconds",
            "When each geo database's data was built (Unix time).",
            labels=["database"],
        )
        for db in self._geo():
            if db.build_timestamp is not None:
                build.add_metric([db.name], db.build_timestamp)
        yield build


class TopDestinations:
    """Egress bytes per ASN over a sliding window, for `douane_top_destination_bytes`.

    The window is cut into buckets; a bucket older than the window is dropped whole, so memory is
    bounded by the number of ASNs seen in one window (about 120,000 exist in all).
    """

    def __init__(self, window: float = 3600.0, buckets: int = 12, top: int = 10) -> None:
        self.window = window
        self.top = top
        self._width = window / buckets
        self._buckets: dict[int, dict[tuple[int, str], int]] = {}

    def add(self, ts: float, asn: int | None, as_name: str | None, nbytes: int) -> None:
        if asn is None or nbytes <= 0:
            return
        index = int(ts // self._width)
        bucket = self._buckets.get(index)
        if bucket is None:  # not setdefault: it would build a dict per call to throw away
            bucket = self._buckets[index] = {}
        key = (asn, as_name or "")
        bucket[key] = bucket.get(key, 0) + nbytes

    def ranking(self, now: float) -> list[tuple[int, str, int]]:
        oldest = int((now - self.window) // self._width) + 1
        for index in [i for i in self._buckets if i < oldest]:
            del self._buckets[index]
        totals: dict[tuple[int, str], int] = {}
        for bucket in self._buckets.values():
            for key, value in bucket.items():
                totals[key] = totals.get(key, 0) + value
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0][0]))[: self.top]
        return [(asn, name, value) for (asn, name), value in ranked]


class TopCollector(Collector):
    def __init__(self, top: TopDestinations, clock: Callable[[], float]) -> None:
        self._top = top
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "douane_top_destination_bytes",
            "Egress bytes to the top destination ASNs over the last window (rank 1 = most).",
            labels=["rank", "asn", "as_name"],
        )
        for rank, (asn, name, value) in enumerate(self._top.ranking(self._clock()), start=1):
            gauge.add_metric([str(rank), str(asn), name], value)
        yield gauge


class Metrics:
    """The labelled metrics douane updates per flow; declared on a registry passed in."""

    def __init__(self, registry: CollectorRegistry, providers: Iterable[str] = ()) -> None:
        """Declare the metrics on `registry`.

        Args:
            providers: the registry's provider slugs; with `other` and `unknown` they are the only
                values the `provider` label takes (anything else counts as `unknown`).
        """
        self.registry = registry
        self.providers = frozenset(providers) | {OTHER, UNKNOWN}
        # The policy's rule names (set by whoever loads the policy): the `rule` label's values.
        self.rules: frozenset[str] = frozenset({UNKNOWN})
        self.egress_bytes = Counter(
            "douane_egress_bytes",
            "IP-layer bytes sent by an internal endpoint to an external one.",
            TRAFFIC_LABELS,
            registry=registry,
        )
        self.egress_flows = Counter(
            "douane_egress_flows",
            "Flows in which an internal endpoint sent data to an external one.",
            TRAFFIC_LABELS,
            registry=registry,
        )
        self.flagged_flows = Counter(
            "douane_flagged_flows",
            "Flows the policy flagged, by severity and rule.",
            FLAGGED_LABELS,
            registry=registry,
        )
        self.flagged_bytes = Counter(
            "douane_flagged_bytes",
            "Egress bytes of flows the policy flagged.",
            FLAGGED_LABELS,
            registry=registry,
        )
        self.config_reload = Counter(
            "douane_config_reload",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=registry,
        )
        for result in RELOAD_RESULTS:
            self.config_reload.labels(result)
        self.policy_exceptions_expired = Gauge(
            "douane_policy_exceptions_expired",
            "Policy exceptions past their expiry date (they no longer apply; renew or remove them).",
            registry=registry,
        )
        # process_* (memory, CPU, open files) for the health dashboard and the systemd memory limit.
        ProcessCollector(registry=registry)
        self.build_info = Gauge(
            "douane_build_info", "douane's version.", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)
        # The series an idle daemon has from its first scrape, so rate() and increase() work.
        for category in DATA_CATEGORIES:
            self.egress_bytes.labels(category, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
            self.egress_flows.labels(category, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        self.top = TopDestinations()
        self.clock: Callable[[], float] = time.time
        # A lambda, not self.clock: the replay swaps the clock after construction.
        registry.register(TopCollector(self.top, lambda: self.clock()))  # noqa: PLW0108
