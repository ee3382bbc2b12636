"""douane.daemon.pipeline: the declaration of a flow and the bounds of its metric labels."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from douane.daemon import pipeline as pipeline_module
from douane.daemon.flows import Flow
from douane.daemon.metrics import Metrics
from douane.daemon.pipeline import Pipeline, address_text, iso_time


def outbound_flow() -> Flow:
    flow = Flow((0, 6), 0, 6, bytes([10, 0, 0, 1]), 50000, bytes([20, 199, 120, 7]), 443, 1.0,
                "outbound")
    flow.packets_out, flow.bytes_out = 3, 1500
    return flow


def provider_stage(slug: str | None) -> Any:
    def stage(record: dict[str, Any]) -> dict[str, Any]:
        record["provider"] = slug
        return record

    return stage


class TestPipeline:
    def test_provider_label_is_bounded(self) -> None:
        """The provider label takes registry slugs, other and unknown; anything else is unknown."""
        for slug, label in (("microsoft", "microsoft"), ("other", "other"), ("evil\\nslug", "unknown"),
                            (None, "unknown")):
            registry = CollectorRegistry()
            records: list[dict[str, Any]] = []
            pipeline = Pipeline([provider_stage(slug)], Metrics(registry, {"microsoft"}), [records.append])
            pipeline.on_close(outbound_flow())
            labels = {"data_category": "unknown", "jurisdiction": "unknown", "location_zone": "unknown",
                      "location_country": "unknown", "provider": label}
            assert registry.get_sample_value("douane_egress_bytes_total", labels) == 1500
            # The record keeps what the stage decided; only the label is bounded.
            assert records[0]["provider"] == slug

    def test_provider_labels_follow_a_reload(self) -> None:
        """A provider the registry learns on reload (Metrics.providers replaced) is its own label from
        the next flow on, although earlier flows with the same values were counted as unknown."""
        registry = CollectorRegistry()
        metrics = Metrics(registry, {"microsoft"})
        pipeline = Pipeline([provider_stage("ovhcloud")], metrics, [])
        labels = {"data_category": "unknown", "jurisdiction": "unknown", "location_zone": "unknown",
                  "location_country": "unknown"}
        pipeline.on_close(outbound_flow())
        metrics.providers = frozenset({"microsoft", "ovhcloud", "other", "unknown"})
        pipeline.on_close(outbound_flow())
        sample = registry.get_sample_value
        assert sample("douane_egress_bytes_total", {**labels, "provider": "unknown"}) == 1500
        assert sample("douane_egress_bytes_total", {**labels, "provider": "ovhcloud"}) == 1500

    def test_label_children_cache_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """However varied the records' values, the label children remembered stay within the bound,
        and every flow is still counted under its labels."""
        monkeypatch.setattr(pipeline_module, "SERIES_KEPT", 4)
        registry = CollectorRegistry()
        countries = [f"{a}{b}" for a in "ABC" for b in "XYZ"]

        def country_stage(record: dict[str, Any]) -> dict[str, Any]:
            record["location_country"] = countries[record["sport"] % len(countries)]
            return record

        pipeline = Pipeline([country_stage], Metrics(registry), [])
        for number in range(3 * len(countries)):
            flow = outbound_flow()
            flow.sport = number
            pipeline.on_close(flow)
            assert len(pipeline._series) <= 4
        for country in countries:
            labels = {"data_category": "unknown", "jurisdiction": "unknown", "location_zone": "unknown",
                      "location_country": country, "provider": "unknown"}
            assert registry.get_sample_value("douane_egress_bytes_total", labels) == 3 * 1500


class TestFlowRecord:
    def test_captured_flow_is_not_sampled(self, net: Any, run_flows: Callable[..., Any]) -> None:
        """A captured flow counts every packet: `sampled` is false and `sampling_interval` null."""
        packets = net.tcp_session(net.CLIENT, net.SERVER, 40000, 443, data=(b"a" * 100,))
        record = run_flows(net.frames_of(net.stamp(packets))).only()
        assert (record["sampled"], record["sampling_interval"]) == (False, None)
        assert record["packets_out"] > 0

    def test_sampled_flow(self) -> None:
        """A flow whose counters were scaled from 1-in-N sampling says so, with N."""
        flow = outbound_flow()
        flow.sampling = 100
        records: list[dict[str, Any]] = []
        Pipeline([], Metrics(CollectorRegistry(), set()), [records.append]).on_close(flow)
        assert (records[0]["sampled"], records[0]["sampling_interval"]) == (True, 100)


class TestRecordText:
    @pytest.mark.parametrize(
        "ts",
        [0.0, 0.0005, 0.999, 0.9999, 1.0, 1_795_860_000.123, 1_795_860_000.9995, 1_795_860_059.999,
         -0.25, 2_000_000_000.5],
    )
    def test_iso_time(self, ts: float) -> None:
        """UTC, milliseconds truncated, and a Z: as the record has always written it."""
        millis = int(ts * 1000)
        second = datetime.fromtimestamp(millis // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert iso_time(ts) == f"{second}.{millis % 1000:03d}Z"

    def test_address_text(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Addresses read as inet_ntop writes them, and the texts remembered stay within the bound."""
        monkeypatch.setattr(pipeline_module, "ADDRESS_TEXTS", 8)
        monkeypatch.setattr(pipeline_module, "_address_texts", {})
        for number in range(50):
            v4 = bytes([192, 0, 2, number])
            v6 = bytes.fromhex("2a001450400780e0000000000000") + number.to_bytes(2, "big")
            assert address_text(v4) == socket.inet_ntop(socket.AF_INET, v4) == f"192.0.2.{number}"
            assert address_text(v6) == socket.inet_ntop(socket.AF_INET6, v6)
            assert len(pipeline_module._address_texts) <= 8
