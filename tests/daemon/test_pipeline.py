"""douane.daemon.pipeline: the declaration of a flow and the bounds of its metric labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from douane.daemon.flows import Flow
from douane.daemon.metrics import Metrics
from douane.daemon.pipeline import Pipeline


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
