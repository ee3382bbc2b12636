"""From an ended (or long-running) flow to its declaration: the flow record, metrics and sinks.

Enrichment and policy are an ordered list of stages (STYLE.md): plain callables that take the record
and return it, or None to drop it. They run once per flow report, never per packet.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

import structlog

from douane.daemon.flows import Flow
from douane.daemon.metrics import (
    DATA_CATEGORIES,
    JURISDICTIONS,
    LOCATION_ZONES,
    UNKNOWN,
    Metrics,
    bounded,
    country_label,
)

Record = dict[str, Any]
Stage = Callable[[Record], Record | None]
Sink = Callable[[Record], None]
# Bounded jurisdiction and provider labels, and (category, egress bytes child, egress flows child).
_Series = tuple[str, str, tuple[tuple[str, Any, Any], ...]]
SERIES_KEPT = 4096  # combinations of record values whose label children are remembered

SEVERITIES = frozenset({"notice", "warning", "critical"})  # the verdicts that flag a flow
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}
PORTED = frozenset({6, 17, 132, 136})

log = structlog.get_logger("douane.pipeline")


class GeoLookup(Protocol):
    def lookup(self, address: str) -> Any: ...


@lru_cache(maxsize=4096)
def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# ".000Z" to ".999Z": looked up rather than formatted each time, which halves the cost of iso_time.
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def iso_time(ts: float) -> str:
    """UTC with milliseconds and a Z, as in DESIGN.md's flow record."""
    millis = int(ts * 1000)
    # Flows end in bursts within the same seconds: format each second once.
    return _utc_second(millis // 1000) + _MILLIS[millis % 1000]


ADDRESS_TEXTS = 65536  # addresses whose text is remembered; the same hosts recur in most flows
_address_texts: dict[bytes, str] = {}


def address_text(raw: bytes) -> str:
    """The text of a packed 4- or 16-byte address, as inet_ntop writes it."""
    text = _address_texts.get(raw)
    if text is None:
        text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        if len(_address_texts) >= ADDRESS_TEXTS:
            _address_texts.clear()  # bounded; refilling costs one inet_ntop per address
        _address_texts[raw] = text
    return text


# Every record starts as a copy of this one, in its field order (sinks write it as it is): copying
# a dict of 33 fields costs about half of building it. Fields set per flow are None here; the two
# mutable ones get a fresh object for each record.
_RECORD: Record = {
    "start": None,
    "end": None,
    "proto": None,
    "src": None,
    "sport": None,
    "dst": None,
    "dport": None,
    "vlan": None,
    "direction": None,
    "zone": None,
    "packets_out": None,
    "bytes_out": None,
    "packets_in": None,
    "bytes_in": None,
    # Counts from a sampling exporter are estimates: N times what was seen (README).
    "sampled": None,
    "sampling_interval": None,
    "hostname": None,
    "hostname_source": None,
    "ech": None,
    "service": None,
    "asn": None,
    "as_name": None,
    "location_country": None,
    "location_zone": UNKNOWN,
    "provider": None,
    "controller_country": None,
    "controller_zone": UNKNOWN,
    "exposure": None,  # a fresh list per record
    "jurisdiction": UNKNOWN,
    "data_categories": None,  # a fresh dict per record
    "verdict": None,
    "rule": None,
    "exception": None,
}


def flow_record(flow: Flow) -> Record:
    """The DESIGN.md flow record; fields later stages fill start as null, `unknown` or empty."""
    record = _RECORD.copy()
    # iso_time and address_text, inlined: two calls each per flow.
    millis = int(flow.first * 1000)
    record["start"] = _utc_second(millis // 1000) + _MILLIS[millis % 1000]
    millis = int(flow.last * 1000)
    record["end"] = _utc_second(millis // 1000) + _MILLIS[millis % 1000]
    proto = flow.proto
    record["proto"] = PROTO_NAMES.get(proto) or str(proto)
    src = flow.src
    record["src"] = _address_texts.get(src) or address_text(src)
    dst = flow.dst
    record["dst"] = _address_texts.get(dst) or address_text(dst)
    if proto in PORTED:
        record["sport"] = flow.sport
        record["dport"] = flow.dport
    record["vlan"] = flow.vlan or None
    record["direction"] = flow.direction
    record["packets_out"] = flow.packets_out
    record["bytes_out"] = flow.bytes_out
    record["packets_in"] = flow.packets_in
    record["bytes_in"] = flow.bytes_in
    sampling = flow.sampling
    record["sampled"] = sampling > 1
    if sampling > 1:
        record["sampling_interval"] = sampling
    record["hostname"] = flow.hostname
    record["hostname_source"] = flow.hostname_source
    record["ech"] = flow.ech
    record["exposure"] = []
    evidence = flow.evidence
    record["data_categories"] = {c: list(names) for c, names in evidence.items()} if evidence else {}
    return record


def remote_address(record: Record) -> str:
    """The endpoint outside: the destination, except for flows opened from outside."""
    return str(record["src"] if record["direction"] == "inbound" else record["dst"])


def geo_stage(geo: GeoLookup) -> Stage:
    """Fills asn, as_name, location_country and location_zone from the remote address."""

    def stage(record: Record) -> Record:
        if record["direction"] == "internal":
            return record
        answer = geo.lookup(remote_address(record))
        record["asn"] = answer.asn
        record["as_name"] = answer.as_name
        record["location_country"] = answer.location_country
        record["location_zone"] = answer.location_zone
        return record

    return stage


class ServiceMatcher(Protocol):
    def match(self, hostname: str) -> Any: ...


def service_stage(catalogue: ServiceMatcher) -> Stage:
    """Fills `service` from the flow's hostname and the catalogue of domains (geo/services.yaml)."""

    def stage(record: Record) -> Record:
        hostname = record["hostname"]
        # A DNS question says what a client asked a resolver, not where this flow goes.
        if hostname and record["hostname_source"] != "dns_query":
            service = catalogue.match(hostname)
            if service is not None:
                record["service"] = service.slug
        return record

    return stage


class Pipeline:
    """Declares flows: builds the record, runs the stages, moves the metrics, calls the sinks."""

    def __init__(self, stages: list[Stage], metrics: Metrics, sinks: list[Sink]) -> None:
        self.stages = stages
        self.metrics = metrics
        self.sinks = sinks
        self.sink_errors = 0
        # Label children cached: `labels()` costs microseconds, a dict look-up a tenth of that.
        # Per combination of the record's own values (see `_series_of`), and per flagged series.
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._series_providers: frozenset[str] = metrics.providers
        self._flagged: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def declare(self, flow: Flow) -> Record | None:
        record: Record | None = flow_record(flow)
        for stage in self.stages:
            if record is None:
                return None
            record = stage(record)
        return record

    def on_update(self, flow: Flow) -> None:
        """A long flow's periodic report: metrics move by what it sent since the last report."""
        record = self.declare(flow)
        if record is not None:
            self._count(flow, record)

    def on_close(self, flow: Flow) -> None:
        # declare(), inlined: one call fewer per flow.
        record = flow_record(flow)
        for stage in self.stages:
            staged = stage(record)
            if staged is None:
                return
            record = staged
        self._count(flow, record)
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:
                self.sink_errors += 1
                if self.sink_errors <= 10 or self.sink_errors % 1000 == 0:
                    log.exception("sink failed", sink=getattr(sink, "__name__", repr(sink)))

    def _count(self, flow: Flow, record: Record) -> None:
        now = (flow.packets_out, flow.bytes_out, flow.packets_in, flow.bytes_in)
        before = flow.reported
        flow.reported = now
        direction = flow.direction
        if direction == "outbound":
            sent, sent_before = now[1], before[1]
        elif direction == "inbound":
            sent, sent_before = now[3], before[3]
        else:
            return
        delta = sent - sent_before
        verdict = record["verdict"]
        flagged = verdict in SEVERITIES
        if delta <= 0 and not (flagged and not flow.flagged):
            return
        m = self.metrics
        # The record's values as they are, bounded into labels once per combination.
        raw = (record["jurisdiction"], record["location_zone"], record["location_country"],
               record["provider"], *record["data_categories"])
        series = self._series.get(raw)
        if series is None or m.providers is not self._series_providers:
            series = self._series_of(raw)
        jurisdiction, provider, children = series
        for category, egress_bytes, egress_flows in children:
            if delta > 0:
                egress_bytes.inc(delta)
                if sent_before == 0:
                    egress_flows.inc()
            if flagged:
                # Bounded by the policy's rule names (Metrics.rules).
                flag_key = (verdict, category, jurisdiction, provider, bounded(record["rule"], m.rules))
                if not flow.flagged:
                    self._flagged_child(m.flagged_flows, flag_key).inc()
                if delta > 0:
                    self._flagged_child(m.flagged_bytes, flag_key).inc(delta)
        if flagged:
            flow.flagged = True
        if delta > 0:
            m.top.add(flow.last, record["asn"], record["as_name"], delta)

    def _flagged_child(self, counter: Any, key: tuple[str, ...]) -> Any:
        # Each made on first use, as `labels()` would: a series appears once it has counted.
        child = self._flagged.get((counter, key))
        if child is None:
            child = self._flagged[(counter, key)] = counter.labels(*key)
        return child

    def _series_of(self, raw: tuple[Any, ...]) -> _Series:
        """The bounded jurisdiction and provider labels and, per data category, the egress children
        for a record's (jurisdiction, location_zone, location_country, provider, *categories)."""
        m = self.metrics
        if m.providers is not self._series_providers or len(self._series) >= SERIES_KEPT:
            # A reload changed the provider labels, or the record values were too varied.
            self._series.clear()
            self._series_providers = m.providers
        raw_jurisdiction, zone, country, raw_provider, *raw_categories = raw
        jurisdiction = bounded(raw_jurisdiction, JURISDICTIONS)
        # Bounded by the registry's slugs (Metrics.providers); the record keeps the real slug.
        provider = bounded(raw_provider, m.providers)
        labels = (jurisdiction, bounded(zone, LOCATION_ZONES), country_label(country), provider)
        categories = [bounded(name, DATA_CATEGORIES) for name in raw_categories] or [UNKNOWN]
        children = []
        for category in categories:
            key = (category, *labels)
            children.append((category, m.egress_bytes.labels(*key), m.egress_flows.labels(*key)))
        series = self._series[raw] = (jurisdiction, provider, tuple(children))
        return series
