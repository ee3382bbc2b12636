"""The daemon's outline (runner.py): SIGHUP reloads, what they apply to a running collector, and the
start of a part that fails. Capture, SIGTERM and systemd end to end: test_live.py."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from douane.daemon.cli import Replay, build_stages, geo_config, start_exporter, tune_gc
from douane.daemon.collector import FlowCollector
from douane.daemon.config import Config, ConfigError, parse_config
from douane.daemon.notify import Notifier
from douane.daemon.runner import Hooks, Runner, StartError
from douane.geo.lookup import GeoDatabases


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoDatabases]:
    databases = GeoDatabases(geo_config(Config()))
    databases.start()
    yield databases


def collector_config(*exporters: str, listen: str = "127.0.0.1:2055") -> Config:
    """A collector's configuration (never bound by the reload tests)."""
    return parse_config({"capture": {"collector": {"listen": listen, "exporters": list(exporters)}}},
                        "douane.yaml")


class Systemd:
    """A real notification socket, as systemd's: what the daemon sent, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.notifier = Notifier(str(path))

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


def runner(geo: GeoDatabases, config: Config, fresh: list[Config | ConfigError],
           notifier: Notifier) -> tuple[Runner, FlowCollector, Replay]:
    """A runner over a collector (not started), whose SIGHUP reads the next of `fresh`."""
    daemon = Replay.build(config, geo=geo, source="collector")
    assert config.capture.collector is not None
    collector = FlowCollector(config.capture.collector, daemon.pipeline.on_close)

    def load() -> Config:
        item = fresh.pop(0)
        if isinstance(item, ConfigError):
            raise item
        return item

    def rebuild(new: Config) -> tuple[list[Any], GeoDatabases]:
        return build_stages(new, geo, daemon.metrics), geo

    hooks = Hooks(load, rebuild, start_exporter, tune_gc)
    return Runner(config, daemon, hooks, collector=collector, notifier=notifier), collector, daemon


class TestReload:
    def test_refused_changes_nothing(self, geo: GeoDatabases, tmp_path: Path) -> None:
        """A bad file: counted as a failure, logged, the stages and exporters list kept, and systemd
        told RELOADING then READY."""
        systemd = Systemd(tmp_path / "notify.sock")
        config = collector_config("192.0.2.1")
        bad = ConfigError("douane.yaml", "zones[0].categories[0]", "one of health, school, personal")
        run, collector, daemon = runner(geo, config, [bad], systemd.notifier)
        stages = daemon.pipeline.stages
        with structlog.testing.capture_logs() as logs:
            run.reload()
        assert daemon.pipeline.stages is stages
        assert collector.allowed == {"192.0.2.1"}
        assert daemon.registry.get_sample_value("douane_config_reload_total", {"result": "failure"}) == 1
        assert [e["event"] for e in logs] == ["config_reload_refused"]
        assert systemd.messages() == ["RELOADING=1", "READY=1"]

    def test_exporters_apply_now(self, geo: GeoDatabases, tmp_path: Path) -> None:
        """A good file: new stages, and the collector's new exporters list at once (no partial
        warning: nothing else changed)."""
        systemd = Systemd(tmp_path / "notify.sock")
        config = collector_config("192.0.2.1")
        run, collector, daemon = runner(geo, config, [collector_config("192.0.2.2", "192.0.2.3")],
                                        systemd.notifier)
        stages = daemon.pipeline.stages
        with structlog.testing.capture_logs() as logs:
            run.reload()
        assert daemon.pipeline.stages is not stages
        assert collector.allowed == {"192.0.2.2", "192.0.2.3"}
        assert daemon.registry.get_sample_value("douane_config_reload_total", {"result": "success"}) == 1
        assert [e["event"] for e in logs] == ["config_reloaded"]

    def test_listen_applies_at_restart(self, geo: GeoDatabases, tmp_path: Path) -> None:
        """A new listen address cannot move a bound socket: the reload says it waits for a restart."""
        systemd = Systemd(tmp_path / "notify.sock")
        config = collector_config("192.0.2.1")
        moved = collector_config("192.0.2.1", listen="127.0.0.1:4739")
        run, _collector, _daemon = runner(geo, config, [moved], systemd.notifier)
        with structlog.testing.capture_logs() as logs:
            run.reload()
        assert [e["event"] for e in logs] == ["config_reload_partial", "config_reloaded"]


@pytest.fixture
def own_signals() -> Iterator[None]:
    """Runner.start() takes SIGTERM, SIGINT and SIGHUP, as a daemon does: given back to pytest after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class TestStart:
    @pytest.mark.usefixtures("own_signals")
    def test_collector_port_taken(self, geo: GeoDatabases, tmp_path: Path) -> None:
        """A collector that cannot bind: StartError naming the address; the evidence store that had
        started is closed again, and a second stop() has nothing left to do."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            config = parse_config({
                "capture": {"collector": {"listen": f"127.0.0.1:{port}", "exporters": ["127.0.0.1"]}},
                "evidence": {"path": str(tmp_path / "evidence.sqlite")}}, "douane.yaml")
            run, _collector, daemon = runner(geo, config, [], Notifier(""))
            with pytest.raises(StartError, match=f"collector on 127.0.0.1:{port}: Address already in use"):
                run.start()
        assert daemon.evidence is not None
        assert (tmp_path / "evidence.sqlite").exists()  # it had started: the store was made
        run.stop()
