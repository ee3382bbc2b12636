"""The parent's merged exporter: the workers' expositions added up, and never going backwards."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from douane.daemon.workers import MergedCollector


class Worker(BaseHTTPRequestHandler):
    bodies: ClassVar[dict[int, str]] = {}
    down: ClassVar[set[int]] = set()

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if port in self.down:
            self.send_response(503)
            self.end_headers()
            return
        body = self.bodies[port].encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def exposition(packets: int, active: int, version: str = "1") -> str:
    return (
        "# TYPE douane_packets_total counter\n"
        f'douane_packets_total{{source="live"}} {packets}\n'
        "# TYPE douane_flows_active gauge\n"
        f"douane_flows_active {active}\n"
        "# TYPE douane_build_info gauge\n"
        f'douane_build_info{{version="{version}"}} 1\n'
    )


def values(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


class TestMergedCollector:
    def test_counters_and_per_worker_gauges_add_up(self) -> None:
        """Counters and flow gauges are summed over workers; build info is taken once; a worker
        that cannot answer a scrape is counted from its last answer, so totals never go back."""
        servers = [HTTPServer(("127.0.0.1", 0), Worker) for _ in range(2)]
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        ports = [s.server_address[1] for s in servers]
        Worker.bodies = {ports[0]: exposition(100, 3), ports[1]: exposition(50, 2)}
        registry = CollectorRegistry()
        registry.register(MergedCollector([f"http://127.0.0.1:{p}/metrics" for p in ports]))
        try:
            first = values(registry)
            assert first["douane_packets_total"] == 150
            assert first["douane_flows_active"] == 5
            assert first["douane_build_info"] == 1
            Worker.down = {ports[1]}
            Worker.bodies[ports[0]] = exposition(120, 1)
            second = values(registry)
            assert second["douane_packets_total"] == 170  # worker 2's last 50 still counted
        finally:
            Worker.down = set()
            for server in servers:
                server.shutdown()
