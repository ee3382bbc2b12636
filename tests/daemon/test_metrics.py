"""Prometheus exposition: the real HTTP endpoint of `douane replay --serve`, and the text file."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from douane.daemon.cli import demo_capture
from douane.daemon.metrics import Metrics, TopDestinations

DOUANE = [sys.executable, "-m", "douane.daemon.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in found.items()
               if n == name and all((k, w) in ls for k, w in labels.items()))


def demo_records() -> list[dict[str, object]]:
    out = subprocess.run([*DOUANE, "replay", str(demo_capture()), "--json"],
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def scraped() -> str:
    """Metrics scraped over HTTP from `douane replay demo.pcap --serve` (a real server)."""
    port = free_port()
    proc = subprocess.Popen([*DOUANE, "replay", str(demo_capture()), "--serve", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    assert r.status == 200
                    return str(r.read().decode())
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    errors = proc.stderr.read() if proc.stderr else ""
                    raise AssertionError(f"exporter never answered: {errors}") from None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class TestExporter:
    def test_packet_and_flow_counters(self, scraped: str) -> None:
        """The endpoint reports every packet of the demo capture and an empty flow table after it."""
        found = samples(scraped)
        assert value(found, "douane_packets_total", source="pcap") == 207
        assert value(found, "douane_flows_active") == 0
        assert value(found, "douane_flows_created_total") == 8
        for reason in ("kernel", "queue", "malformed", "truncated"):
            assert value(found, "douane_packets_dropped_total", reason=reason) == 0

    def test_egress_matches_flow_records(self, scraped: str) -> None:
        """Egress bytes per country equal what internal hosts sent, summed from the JSON records."""
        found = samples(scraped)
        expected: dict[str, int] = {}
        flows: dict[str, int] = {}
        for rec in demo_records():
            if rec["direction"] == "outbound":
                sent = int(rec["bytes_out"])  # type: ignore[call-overload]
            elif rec["direction"] == "inbound":
                sent = int(rec["bytes_in"])  # type: ignore[call-overload]
            else:
                continue
            country = str(rec["location_country"] or "unknown")
            expected[country] = expected.get(country, 0) + sent
            flows[country] = flows.get(country, 0) + 1
        assert expected.get("FR", 0) > 0
        for country, nbytes in expected.items():
            assert total(found, "douane_egress_bytes_total", location_country=country) == nbytes
            assert total(found, "douane_egress_flows_total", location_country=country) == flows[country]
        # In France: Microsoft's Azure region (US-controlled) and OVHcloud (EU-controlled).
        # (The DICOM association to Azure is health data: its bytes carry data_category="health".)
        microsoft = total(found, "douane_egress_bytes_total", jurisdiction="us",
                          location_zone="eea", location_country="FR", provider="microsoft")
        ovhcloud = value(found, "douane_egress_bytes_total", data_category="unknown", jurisdiction="eu",
                         location_zone="eea", location_country="FR", provider="ovhcloud")
        assert microsoft > 0 and ovhcloud > 0
        assert microsoft + ovhcloud == expected["FR"]

    def test_flagged_flow(self, scraped: str) -> None:
        """The DICOM association to Azure is flagged critical by the default policy, flows and bytes."""
        found = samples(scraped)
        dicom = next(r for r in demo_records() if r["dport"] == 104)
        assert dicom["data_categories"] == {"health": ["protocol:dicom"]}
        assert (dicom["verdict"], dicom["rule"]) == ("critical", "health-outside-eu")
        labels = {"severity": "critical", "data_category": "health", "jurisdiction": "us",
                  "provider": "microsoft", "rule": "health-outside-eu"}
        assert value(found, "douane_flagged_flows_total", **labels) == 1
        assert value(found, "douane_flagged_bytes_total", **labels) == dicom["bytes_out"]
        assert total(found, "douane_flagged_flows_total") == 1
        assert value(found, "douane_policy_exceptions_expired") == 0

    def test_series_exist_from_the_start(self, scraped: str) -> None:
        """Bounded series exist at zero so that rate() works from the first scrape."""
        found = samples(scraped)
        assert value(found, "douane_egress_bytes_total", data_category="health", jurisdiction="unknown",
                     location_zone="unknown", location_country="unknown", provider="unknown") == 0
        assert value(found, "douane_config_reload_total", result="failure") == 0

    def test_build_info_and_databases(self, scraped: str) -> None:
        """Version and the build time of each embedded geo database are exposed."""
        found = samples(scraped)
        assert total(found, "douane_build_info") == 1
        for db in ("country", "asn"):
            built = value(found, "douane_geo_database_build_timestamp_seconds", database=db)
            assert 1.7e9 < built < time.time()

    def test_top_destinations(self, scraped: str) -> None:
        """The top ASN by egress bytes in the demo is Microsoft's AS8075, rank 1."""
        found = samples(scraped)
        top = [(dict(ls), v) for (n, ls), v in found.items() if n == "douane_top_destination_bytes"]
        first = next(labels for labels, _ in top if labels["rank"] == "1")
        assert first["asn"] == "8075"
        assert "Microsoft" in first["as_name"]

    def test_no_address_in_metrics(self, scraped: str) -> None:
        """No metric carries an IP address (privacy, and bounded cardinality)."""
        assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", scraped)
        assert "2a01:" not in scraped and "fd00:" not in scraped


class TestErrorCounters:
    def test_malformed_and_ignored_move(self, tmp_path: Path) -> None:
        """A truncated, a forged and a non-IP frame each move their counter in --metrics-out."""
        good = Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / UDP(sport=5000, dport=53) / Raw(b"x" * 20)
        forged = bytearray(bytes(good))
        forged[14 + 2: 14 + 4] = (1500).to_bytes(2, "big")  # IPv4 total length beyond the frame
        truncated = bytes(good)[:14 + 10]
        frames = [good, Ether(bytes(forged)), Ether(truncated), Ether() / ARP(), good]
        pcap = tmp_path / "bad.pcap"
        wrpcap(str(pcap), frames)
        out = tmp_path / "metrics.prom"
        result = subprocess.run([*DOUANE, "replay", str(pcap), "--metrics-out", str(out)],
                                check=False, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert "2 malformed or truncated packets skipped" in result.stderr
        found = samples(out.read_text())
        assert value(found, "douane_packets_total", source="pcap") == 5
        assert value(found, "douane_packets_dropped_total", reason="malformed") == 1
        assert value(found, "douane_packets_dropped_total", reason="truncated") == 1
        assert value(found, "douane_packets_ignored_total") == 1
        assert total(found, "douane_egress_flows_total", location_country="US") == 1

    def test_eviction_counter_moves(self, tmp_path: Path) -> None:
        """With max_flows 2, a third concurrent flow evicts one, counted in the metric."""
        frames = [Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / TCP(sport=40000 + i, dport=443, flags="S")
                  for i in range(3)]
        for i, frame in enumerate(frames):
            frame.time = 1_700_000_000 + i * 0.1
        pcap = tmp_path / "three.pcap"
        wrpcap(str(pcap), frames)
        config = tmp_path / "small.yaml"
        config.write_text("flows:\n  max_flows: 2\n")
        out = tmp_path / "metrics.prom"
        subprocess.run([*DOUANE, "replay", str(pcap), "-c", str(config), "--metrics-out", str(out)],
                       check=True, capture_output=True)
        found = samples(out.read_text())
        assert value(found, "douane_flow_table_evictions_total") == 1
        assert value(found, "douane_flows_created_total") == 3


class TestTopDestinations:
    def test_window_forgets_old_bytes(self) -> None:
        """Bytes older than the window leave the ranking; ties rank by ASN."""
        top = TopDestinations(window=60, buckets=6, top=2)
        top.add(0, 1, "one", 500)
        top.add(100, 2, "two", 10)
        top.add(101, 3, "three", 10)
        assert top.ranking(110) == [(2, "two", 10), (3, "three", 10)]
        top.add(110, 3, "three", 5)
        assert top.ranking(110)[0] == (3, "three", 15)

    def test_unknown_asn_ignored(self) -> None:
        """A flow without an ASN does not enter the ranking."""
        top = TopDestinations()
        top.add(0, None, None, 100)
        assert top.ranking(1) == []

    def test_registry_is_private(self) -> None:
        """Metrics register on the registry passed in, never on the global default one."""
        from prometheus_client import REGISTRY

        from douane.daemon import __version__

        registry = CollectorRegistry()
        Metrics(registry)
        labels = dict.fromkeys(
            ("data_category", "jurisdiction", "location_zone", "location_country", "provider"), "unknown"
        )
        assert registry.get_sample_value("douane_build_info", {"version": __version__}) == 1
        assert registry.get_sample_value("douane_egress_bytes_total", labels) == 0
        assert REGISTRY.get_sample_value("douane_egress_bytes_total", labels) is None
