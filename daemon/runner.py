"""The daemon's outline, shared by `douane run` and `douane collect`.

Start the parts in order (evidence store, live capture, flow collector, geo databases, exporter),
tell systemd READY once every flow source is up, serve until SIGTERM or SIGINT, reload on SIGHUP,
then stop the parts in reverse order: the collector reads what the kernel still holds, the flow
table declares its open flows, and only then does the evidence store close. One failing stop does
not keep the others from running.

Flows come from live capture, from exporters' flow records, or both, and one thread declares all of
them: the pipeline, its metric children and the evidence store are not shared across threads. With
capture, the collector's UDP socket is one more descriptor in the capture loop's poll
(`LiveCapture.batches(readers=...)`), read after the frames of the same wake-up, so no queue sits
between the two (datagrams wait in the socket's bounded kernel buffer); without it, the collector's
own loop (`FlowCollector.serve`) runs the same idle work.
"""

from __future__ import annotations

import dataclasses
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry

from douane.daemon.collector import FINAL_DRAIN, FlowCollector
from douane.daemon.config import Config, ConfigError
from douane.daemon.evidence import EvidenceError
from douane.daemon.live import LiveCapture
from douane.daemon.notify import Notifier
from douane.daemon.pipeline import Stage

if TYPE_CHECKING:
    from douane.daemon.cli import Replay
    from douane.geo.lookup import GeoDatabases

log = structlog.get_logger("douane")


class StartError(Exception):
    """A part could not start (interface, collector port, evidence store, exporter); the message
    says which and why. Whatever had started is stopped again."""


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the runner needs from the command line's wiring (cli.py), without importing it.

    load: reads and validates the configuration file again (SIGHUP); raises ConfigError.
    rebuild: the stages and started geo databases for a configuration; raises ConfigError.
    start_exporter: the metrics endpoint's (server, thread); raises OSError or ssl.SSLError.
    tune: prepares the process for its packet loop (garbage collector settings).
    """

    load: Callable[[], Config]
    rebuild: Callable[[Config], tuple[list[Stage], GeoDatabases]]
    start_exporter: Callable[[Config, CollectorRegistry], tuple[Any, Any]]
    tune: Callable[[], None]


class Runner:
    """Runs one daemon: its flow sources, its pipeline (a `Replay`), its exporter and systemd."""

    def __init__(self, config: Config, daemon: Replay, hooks: Hooks, live: LiveCapture | None = None,
                 collector: FlowCollector | None = None, notifier: Notifier | None = None) -> None:
        if live is None and collector is None:
            raise ValueError("a daemon needs live capture, a collector, or both")
        self.config = config  # as started: capture and flows settings apply until a restart
        self.daemon = daemon
        self.hooks = hooks
        self.live = live
        self.collector = collector
        self.notifier = notifier if notifier is not None else Notifier()
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self._stops: list[tuple[str, Callable[[], None]]] = []

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part, in order; raises StartError (after stopping what had started)."""
        stop, reload = self.stop_event, self.reload_event
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, lambda *_: reload.set())
        self._stops = [("stdout", sys.stdout.flush)]
        try:
            self._start_parts()
        except StartError:
            self.stop()
            raise

    def _start_parts(self) -> None:
        daemon, config = self.daemon, self.config
        evidence = daemon.evidence
        if evidence is not None:
            try:
                evidence.start()
            except EvidenceError as exc:
                raise StartError(str(exc)) from None
            self._stops.append(("evidence", evidence.stop))
        live, collector = self.live, self.collector
        if live is not None:
            try:
                live.start()  # raises CaptureError naming the interface
            except OSError as exc:
                raise StartError(str(exc)) from None
            self._stops.append(("capture", lambda: self._stop_capture(live)))
        if collector is not None:
            try:
                collector.start()
            except OSError as exc:
                raise StartError(f"collector on {collector.config.listen}: {exc.strerror or exc}") from None
            self._stops.append(("collector", lambda: self._stop_collector(collector)))
        daemon.geo.start()
        self.hooks.tune()
        try:
            server, thread = self.hooks.start_exporter(config, daemon.registry)
        except (OSError, ssl.SSLError) as exc:
            raise StartError(f"exporter on {config.exporter_listen}: {exc}") from None

        def stop_exporter() -> None:
            server.shutdown()
            thread.join(timeout=5)

        self._stops.append(("exporter", stop_exporter))

    # -- serve ---------------------------------------------------------------------------------

    def serve(self) -> None:
        """READY, then declare flows until SIGTERM/SIGINT; then stop every part (always)."""
        config, live, collector = self.config, self.live, self.collector
        status = []
        if live is not None:
            status.append(f"capturing on {', '.join(config.capture.interfaces)}")
        if collector is not None:
            host, port = collector.address
            bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            status.append(f"collecting on {bound}")
        self.notifier.send("READY=1", f"STATUS={'; '.join(status)}")
        if live is not None:
            log.info("capture_started", interfaces=list(config.capture.interfaces),
                     bpf=config.capture.bpf, exporter=config.exporter_listen)
        if collector is not None:
            log.info("collector_started", listen=bound, exporters=sorted(collector.allowed),
                     protocols=list(collector.config.decoder.protocols),
                     exporter=config.exporter_listen, dns_names=live is not None)
        try:
            if live is not None:
                readers = {collector.fileno(): lambda _now: collector.drain()} if collector else {}
                self.daemon.table.ingest_batches(live.batches(self.stop_event, self.on_idle, readers))
            elif collector is not None:
                collector.serve(self.stop_event, self.on_idle)
        finally:
            self.notifier.send("STOPPING=1")
            self.stop()

    def on_idle(self, now: float) -> None:
        """At least every poll period, on the declaring thread: timeouts, health, watchdog, reload."""
        table = self.daemon.table
        # With capture, flows time out on packet time; without, the metrics' clock (top
        # destinations) follows the wall clock all the same.
        table.tick(now)
        if self.live is not None:
            table.stats.dropped["kernel"] = self.live.drops()
        if self.collector is not None:
            self.collector.expire(now)
        self.notifier.beat()
        if self.reload_event.is_set():
            self.reload_event.clear()
            self.reload()

    # -- SIGHUP --------------------------------------------------------------------------------

    def reload(self) -> None:
        """Configuration, policy and geo databases again, and the collector's exporters; a bad
        file changes nothing (the daemon goes on with what it had)."""
        metrics = self.daemon.metrics
        self.notifier.send("RELOADING=1")
        try:
            fresh = self.hooks.load()
            stages, geo = self.hooks.rebuild(fresh)
        except ConfigError as exc:
            metrics.config_reload.labels("failure").inc()
            log.error("config_reload_refused", error=str(exc))
        else:
            self.daemon.pipeline.stages = stages
            self.daemon.geo = geo
            if self.collector is not None and fresh.capture.collector is not None:
                self.collector.allow(fresh.capture.collector.exporters)
            metrics.config_reload.labels("success").inc()
            if _restart_only(self.config) != _restart_only(fresh):
                log.warning("config_reload_partial",
                            detail="capture and flows settings apply at the next restart "
                            "(of capture.collector, the exporters list applies now)")
            log.info("config_reloaded", source=fresh.source)
        self.notifier.send("READY=1")

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop what started, in reverse order; a failing part is logged and the others still stop."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception:  # the next parts must stop all the same
                log.exception("stop_failed", part=name)

    @staticmethod
    def _stop_collector(collector: FlowCollector) -> None:
        # Records the kernel already holds are declared, not lost with the socket.
        collector.drain(FINAL_DRAIN)
        collector.stop()
        stats = collector.decoder.stats
        log.info("collector_stopped", records=sum(s.records for s in stats.values()),
                 refused=collector.refused)

    def _stop_capture(self, live: LiveCapture) -> None:
        table = self.daemon.table
        table.stats.dropped["kernel"] = live.drops()
        live.stop()
        # SIGTERM: every active flow is declared (metrics, evidence) before the process exits.
        table.flush()
        log.info("capture_stopped", packets=table.stats.packets, flows=table.stats.flows_created)


def _restart_only(config: Config) -> tuple[object, ...]:
    """The settings a reload cannot apply to a running daemon (the exporters list it can)."""
    capture = config.capture
    if capture.collector is not None:
        capture = dataclasses.replace(capture, collector=dataclasses.replace(capture.collector,
                                                                             exporters=()))
    return capture, config.flows
