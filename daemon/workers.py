"""`capture.workers: N`: N capture processes sharing the interfaces by flow hash, one exporter.

Each worker is `douane run --worker-of GROUP`: it joins the PACKET_FANOUT group of each interface,
so the kernel hands it every packet of the flows whose hash falls to it (both directions of a flow
hash alike), and it runs the whole pipeline on them. The parent process starts the workers, forwards
SIGHUP and SIGTERM to them, speaks to systemd, and serves one metrics endpoint that adds up the
workers' own (scraped on loopback at each scrape).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from douane.daemon.notify import Notifier

log = structlog.get_logger("douane.workers")

# Gauges that are per-worker quantities to add up; any other gauge (build info, database build
# times, expired exceptions) is the same in every worker and is taken once (the highest).
SUMMED_GAUGES = frozenset({"douane_flows_active", "douane_dns_cache_entries"})


class MergedCollector(Collector):
    """The workers' metrics as one exposition: counters added up, gauges added or taken once."""

    def __init__(self, urls: list[str], timeout: float = 2.0) -> None:
        self.urls = urls
        self.timeout = timeout
        self.failures = 0
        # Each worker's last answer: a worker too busy to answer one scrape is counted from its
        # previous figures, so the sums never go backwards (Prometheus would read a counter reset).
        self._last: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 — loopback URLs we built
                    text = response.read().decode()
                self._last[url] = text
            except OSError:
                self.failures += 1
                if url not in self._last:
                    continue
                text = self._last[url]
            for family in text_string_to_metric_families(text):
                if family.name.startswith(("process_", "python_")):
                    continue  # per process: the workers' own would mean nothing added up
                target = merged.setdefault(family.name, Metric(family.name, family.documentation,
                                                               family.type))
                summed = family.type == "counter" or family.name in SUMMED_GAUGES
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in values:
                        values[key] = sample.value
                        target.samples.append(sample)
                    elif summed:
                        values[key] += sample.value
                    else:
                        values[key] = max(values[key], sample.value)
        for family in merged.values():
            family.samples = [
                s._replace(value=values[(s.name, tuple(sorted(s.labels.items())))])
                for s in family.samples
            ]
            yield family


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_workers(args: Any, config: Any, start_exporter: Any) -> int:
    """The parent of `capture.workers` capture processes; returns the exit status."""
    count = config.capture.workers
    group = (os.getpid() * 7919) & 0xFFFF  # fanout group ids are per network namespace: any unused
    ports = [_free_port() for _ in range(count)]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    command = [sys.executable, "-m", "douane.daemon.cli", "run", "--worker-of", str(group)]
    if args.config:
        command += ["-c", args.config]
    if args.json:
        command.append("--json")
    children = [subprocess.Popen([*command, "--exporter", f"127.0.0.1:{port}"], env=env)
                for port in ports]
    registry = CollectorRegistry()
    merged = MergedCollector([f"http://127.0.0.1:{port}/metrics" for port in ports])
    registry.register(merged)
    notifier = Notifier()
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    server = thread = None
    status = 0
    try:
        server, thread = start_exporter(config, registry)
        _wait_ready(ports, children)
        notifier.send("READY=1", f"STATUS=capturing with {count} workers")
        log.info("workers_started", workers=count, pids=[c.pid for c in children])
        while not stop.wait(0.5):
            if reload.is_set():
                reload.clear()
                for child in children:
                    child.send_signal(signal.SIGHUP)
            notifier.beat()
            dead = [c for c in children if c.poll() is not None]
            if dead:
                log.error("worker_exited", pid=dead[0].pid, status=dead[0].returncode)
                status = 1
                break
    except (OSError, RuntimeError) as exc:
        print(f"douane run: workers: {exc}", file=sys.stderr)
        status = 2
    finally:
        notifier.send("STOPPING=1")
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # each worker declares its own open flows
        for child in children:
            code = child.wait()
            status = status or code
        if server is not None:
            server.shutdown()
        if thread is not None:
            thread.join(timeout=5)
    return status


def _wait_ready(ports: list[int], children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 120
    waiting = set(ports)
    while waiting:
        for port in list(waiting):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
                    waiting.discard(port)
            except OSError:
                pass
        if any(c.poll() is not None for c in children):
            raise RuntimeError("a worker exited during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError("workers not ready within 120 s")
        time.sleep(0.2)
