"""The `douane` command: replay, collect, demo, lookup, check, version."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import secrets
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from douane.daemon import __version__
from douane.daemon.categories import service_category_stage, zone_stage
from douane.daemon.collector import CollectorMetrics, FlowCollector
from douane.daemon.config import Config, ConfigError, check_sources, load_config
from douane.daemon.dnsnames import DnsNames
from douane.daemon.evidence import EvidenceConfig, EvidenceError, EvidenceStore, evidence_log_sink
from douane.daemon.explain import run_lookup
from douane.daemon.flows import FlowTable
from douane.daemon.identify import Identify
from douane.daemon.live import LiveCapture, LiveConfig
from douane.daemon.logsetup import configure_logging
from douane.daemon.metrics import OTHER, UNKNOWN, DaemonCollector, GeoDatabaseStatus, Metrics
from douane.daemon.notify import Notifier
from douane.daemon.pcapfile import CaptureFile, CaptureFormatError, open_capture
from douane.daemon.pipeline import Pipeline, Record, geo_stage, service_stage
from douane.daemon.policy import Policy, policy_stage
from douane.daemon.pseudonym import Pseudonymiser
from douane.daemon.report import add_parser as add_report_parser
from douane.daemon.runner import Hooks, Runner, StartError
from douane.daemon.summary import Summary
from douane.daemon.workers import run_workers
from douane.geo.jurisdiction import load_jurisdictions, make_jurisdiction_stage
from douane.geo.lookup import ATTRIBUTION, GeoConfig, GeoDatabases
from douane.geo.services import default_catalogue
from douane.geo.state import ResolvedFiles, resolve_files
from douane.geo.update import fetch_sources, update_from

EXIT_OK = 0
EXIT_PROBLEM = 1  # the command ran and found something wrong (check, unreadable part of a capture)
EXIT_USAGE = 2  # bad arguments, configuration or input file

log = structlog.get_logger("douane")


def geo_files(config: Config) -> ResolvedFiles:
    """Configured files first, then those `douane update-db` put in the state directory."""
    g = config.geo
    return resolve_files(g.country_db, g.asn_db, g.as_names, g.ranges_dir, g.state_dir)


def geo_config(config: Config) -> GeoConfig:
    files = geo_files(config)
    return GeoConfig(
        country_db=files.country_db, asn_db=files.asn_db, as_names=files.as_names,
        cache_size=config.geo.cache_size,
    )


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Replay:
    """Everything one replay builds: wired in order, so tests can run it in-process too."""

    config: Config
    registry: CollectorRegistry
    metrics: Metrics
    geo: GeoDatabases
    pipeline: Pipeline
    table: FlowTable
    summary: Summary
    geo_ready: bool = False
    evidence: EvidenceStore | None = None
    identify: Identify | None = None  # its DNS cache names collected flows under `douane run`

    @classmethod
    def build(
        cls, config: Config, sinks: Sequence[Any] = (), geo: GeoDatabases | None = None,
        source: str = "pcap",
    ) -> Replay:
        """Wire a replay; `geo`, when given, is a started GeoDatabases to share (tests)."""
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        geo_ready = geo is not None
        geo = geo if geo is not None else GeoDatabases(geo_config(config))
        summary = Summary()
        pipeline = Pipeline(build_stages(config, geo, metrics), metrics, [summary, *sinks])
        evidence_sinks, evidence = evidence_parts(config)
        pipeline.sinks.extend(evidence_sinks)
        identify = Identify(config.identify)
        table = FlowTable(config.flows, pipeline.on_close, pipeline.on_update, identify)
        replay = cls(config, registry, metrics, geo, pipeline, table, summary, geo_ready, evidence,
                     identify)
        registry.register(
            DaemonCollector(
                table_stats=lambda: (
                    table.stats.ignored, table.stats.dropped, len(table), table.stats.evictions,
                    table.stats.flows_created,
                ),
                sources=lambda: {source: table.stats.packets},
                dns_cache_entries=lambda: len(identify.dns_cache),
                geo_databases=replay.geo_status,
            )
        )
        # Windows (top destinations) follow packet time in a replay, not the wall clock.
        metrics.clock = lambda: table.now
        return replay

    def geo_status(self) -> list[GeoDatabaseStatus]:
        return [
            GeoDatabaseStatus(db.name, db.build_time.timestamp() if db.build_time else None)
            for db in self.geo.databases()
        ]

    def run(self, capture: CaptureFile) -> None:
        """Ingest the whole capture, then end every flow. Raises CaptureFormatError, OSError."""
        if not self.geo_ready:
            self.geo.start()
            self.geo_ready = True
        if self.evidence is not None:
            self.evidence.start()  # raises EvidenceError naming the file
        tune_gc()
        try:
            self.table.ingest_batches(capture.batches())
        finally:
            self.table.flush()
            if self.evidence is not None:
                self.evidence.stop()


def tune_gc() -> None:
    """Garbage collection for a packet loop: the loaded databases are frozen out of every scan,
    and young collections run every 50,000 allocations instead of 700. The per-packet path makes
    no reference cycles, so this only removes scans of a large live heap (measured: the
    collector took about a fifth of a replay's time with identification on)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def build_stages(config: Config, geo: GeoDatabases, metrics: Metrics) -> list[Any]:
    """The enrichment and policy stages for a configuration (at start, and again on SIGHUP).

    Raises ConfigError (PolicyError) for a bad policy; nothing is changed until it returns.
    """
    jurisdictions = load_jurisdictions(geo_files(config).ranges_dir, config.geo.cache_size)
    catalogue = default_catalogue()  # the shipped file, read once per process
    policy = load_policy(config)
    metrics.providers = frozenset(jurisdictions.provider_labels) | {OTHER, UNKNOWN}
    metrics.rules = frozenset(rule.name for rule in policy.rules) | {UNKNOWN}
    # Jurisdiction after service: a service or hostname can name the controller. The policy
    # last: it reads every field the stages before it fill.
    return [
        geo_stage(geo), service_stage(catalogue), make_jurisdiction_stage(jurisdictions),
        zone_stage(config.zones), service_category_stage(catalogue),
        policy_stage(policy, lambda expired: metrics.policy_exceptions_expired.set(len(expired))),
    ]


def evidence_parts(config: Config) -> tuple[list[Any], EvidenceStore | None]:
    """The flagged-flow sinks: the structlog line always, the SQLite store when a path is set.

    Internal addresses are pseudonymised with the installation's key kept beside the store; with no
    store, with a key made for this run only (pseudonyms then mean nothing across runs).
    """
    enabled = config.pseudonymise_internal_addresses
    path = config.evidence_path
    if path is None:
        pseudonymiser = Pseudonymiser(secrets.token_bytes(32), enabled=enabled)
        return [evidence_log_sink(pseudonymiser, remote_addresses=config.evidence_remote_addresses)], None
    pseudonymiser = Pseudonymiser.from_state_dir(path.parent, enabled=enabled)
    store = EvidenceStore(
        EvidenceConfig(path=path, retention_days=config.evidence_retention_days,
                       synchronous=config.evidence_synchronous,
                       remote_addresses=config.evidence_remote_addresses),
        pseudonymiser,
    )
    sinks = [store.record,
             evidence_log_sink(pseudonymiser, remote_addresses=config.evidence_remote_addresses)]
    return sinks, store


def default_policy_path() -> Path:
    return Path(str(resources.files("douane.config") / "policy.yaml"))


def load_policy(config: Config) -> Policy:
    """The configured policy, or the default one shipped with douane; raises PolicyError."""
    path = config.policy if config.policy is not None else default_policy_path()
    return Policy.load(path, zones=[zone.name for zone in config.zones])


class Progress:
    """A progress bar on stderr, shown only on a terminal and only after the first second."""

    def __init__(self, capture: CaptureFile, out: TextIO) -> None:
        self._capture = capture
        self._out = out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._shown = False

    def __enter__(self) -> Progress:
        if self._out.isatty():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._shown:
            self._out.write("\r\x1b[K")
            self._out.flush()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(0.25):
            elapsed = time.monotonic() - start
            size = self._capture.size
            if elapsed < 1.0 or not size:
                continue
            done = min(self._capture.bytes_read / size, 1.0)
            bar = "#" * int(done * 30)
            self._out.write(f"\r[{bar:<30}] {done:4.0%} {elapsed:5.1f}s")
            self._out.flush()
            self._shown = True


def _json_sink(out: TextIO) -> Any:
    def write(record: Record) -> None:
        out.write(json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n")

    return write


def cmd_replay(args: argparse.Namespace, path: Path | None = None) -> int:
    config = load_config(args.config)
    if getattr(args, "evidence", None):
        config = dataclasses.replace(config, evidence_path=Path(args.evidence))
    configure_logging(config.log_level, config.log_format)
    capture_path = path or Path(args.file)
    sinks = [_json_sink(sys.stdout)] if args.json else []
    replay = Replay.build(config, sinks)
    capture = open_capture(capture_path)
    status = EXIT_OK
    try:
        with Progress(capture, sys.stderr):
            replay.run(capture)
    except CaptureFormatError as exc:
        print(f"douane: {exc}", file=sys.stderr)
        status = EXIT_USAGE
    except EvidenceError as exc:
        print(f"douane: evidence store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"douane: {capture_path}: cannot read ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_USAGE
    stats = replay.table.stats
    if capture.truncated:
        print(
            f"douane: warning: {capture_path}: the last record is cut short (capture ended "
            "mid-write); every complete packet before it was read",
            file=sys.stderr,
        )
    if capture.bad_records:
        print(f"douane: warning: {capture_path}: {capture.bad_records} inconsistent pcapng blocks "
              "skipped", file=sys.stderr)
    malformed = sum(stats.dropped.values())
    if malformed:
        reasons = ", ".join(f"{n} {d}" for d, n in sorted(stats.malformed_detail.items()))
        print(f"douane: {malformed} malformed or truncated packets skipped ({reasons})",
              file=sys.stderr)
    if not args.json:
        replay.summary.render(sys.stdout, stats, str(capture_path))
    sys.stdout.flush()
    if args.metrics_out:
        Path(args.metrics_out).write_bytes(generate_latest(replay.registry))
    if getattr(args, "serve", None):
        return _serve(replay.registry, args.serve, status, config)
    return status


def start_exporter(config: Config, registry: CollectorRegistry, listen: str | None = None) -> Any:
    """The metrics endpoint: plain HTTP, or TLS (and client certificates) when exporter.tls says so.

    Raises OSError (address in use, unreadable certificate) and ssl.SSLError (bad certificate).
    """
    host, port = parse_listen(listen or config.exporter_listen)
    if config.exporter_cert is None:
        return start_http_server(port, addr=host, registry=registry)
    return start_http_server(
        port, addr=host, registry=registry,
        certfile=str(config.exporter_cert), keyfile=str(config.exporter_key),
        client_cafile=str(config.exporter_client_ca) if config.exporter_client_ca else None,
        client_auth_required=config.exporter_client_ca is not None,
        tls_min_version=ssl.TLSVersion.TLSv1_2,
    )


def _serve(registry: CollectorRegistry, listen: str, status: int, config: Config) -> int:
    server, thread = start_exporter(config, registry, listen)
    scheme = "https" if config.exporter_cert is not None else "http"
    print(f"douane: serving metrics on {scheme}://{listen}/metrics until interrupted", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    return status


def demo_capture() -> Path:
    return Path(str(resources.files("douane.daemon") / "data" / "demo.pcap"))


def cmd_demo(args: argparse.Namespace) -> int:
    args.config = str(resources.files("douane.config") / "demo.yaml")
    args.file = None
    return cmd_replay(args, demo_capture())


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: live capture on capture.interface, flow records from capture.collector, or both,
    until SIGTERM/SIGINT; SIGHUP reloads configuration, policy, databases and the exporters list."""
    config = load_config(args.config)
    configure_logging(config.log_level, config.log_format)
    try:
        check_sources(config)
    except ConfigError as exc:
        print(f"douane run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    worker = args.worker_of is not None
    if config.capture.workers > 1 and not worker:
        # A collector beside workers is refused by the configuration (config.py).
        _, store = evidence_parts(config)
        if store is not None:
            # Created (and migrated) once here, so the workers only open it.
            try:
                store.start()
                store.stop()
            except EvidenceError as exc:
                print(f"douane run: {exc}", file=sys.stderr)
                return EXIT_USAGE
        return run_workers(args, config, start_exporter)
    if worker:
        # One JSON line per write: several workers share the standard output.
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        config = dataclasses.replace(config, exporter_listen=args.exporter, exporter_cert=None,
                                     exporter_key=None, exporter_client_ca=None)
    return run_daemon(args, config, "douane run", capture=True)


def cmd_collect(args: argparse.Namespace) -> int:
    """NetFlow v5/v9 and IPFIX from the listed exporters (capture.collector) until SIGTERM/SIGINT:
    `douane run` with the collector alone, whatever capture.interface says."""
    config = load_config(args.config)
    configure_logging(config.log_level, config.log_format)
    try:
        check_sources(config, live=False)
    except ConfigError as exc:
        print(f"douane collect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_daemon(args, config, "douane collect", capture=False)


def run_daemon(args: argparse.Namespace, config: Config, command: str, capture: bool) -> int:
    """Wires the sources the configuration names (`capture`: live capture too, when an interface is
    configured) to one pipeline and runs them (runner.py) until SIGTERM."""
    sinks = [_json_sink(sys.stdout)] if args.json else []
    live_on = capture and bool(config.capture.interfaces)
    daemon = Replay.build(config, sinks, source="live" if live_on else "collector")
    live = None
    if live_on:
        live = LiveCapture(LiveConfig(config.capture.interfaces, config.capture.bpf,
                                      fanout_group=args.worker_of))
    collector = None
    settings = config.capture.collector
    if settings is not None:
        on_flow = daemon.pipeline.on_close
        if live is not None and daemon.identify is not None:
            # Collected flows are named from the DNS answers this process captures.
            on_flow = DnsNames(daemon.identify.dns_cache, on_flow)
        collector = FlowCollector(settings, on_flow)
        daemon.registry.register(CollectorMetrics(collector))

    def load() -> Config:
        fresh = load_config(args.config)
        check_sources(fresh, live=capture)
        return fresh

    def rebuild(fresh: Config) -> tuple[list[Any], GeoDatabases]:
        geo = GeoDatabases(geo_config(fresh))
        geo.start()
        return build_stages(fresh, geo, daemon.metrics), geo

    # A worker of `capture.workers`: its parent speaks to systemd.
    notifier = Notifier("") if getattr(args, "worker_of", None) is not None else Notifier()
    runner = Runner(config, daemon, Hooks(load, rebuild, start_exporter, tune_gc), live, collector,
                    notifier)
    try:
        runner.start()
    except StartError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    runner.serve()
    return EXIT_OK


def cmd_lookup(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # Start-up chatter would drown the answers; warnings (a missing database) still show.
    configure_logging("warning", config.log_format)
    geo = GeoDatabases(geo_config(config))
    geo.start()
    engine = load_jurisdictions(geo_files(config).ranges_dir, config.geo.cache_size)
    run_lookup(args.addresses, geo, engine, args.json, sys.stdout)
    return EXIT_OK


def cmd_update_db(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging("warning", config.log_format)
    state_dir = Path(args.state_dir) if args.state_dir else config.geo.state_dir
    if args.source is not None:
        source = Path(args.source)
        if not source.is_dir():
            print(f"douane update-db: {source}: not a folder", file=sys.stderr)
            return EXIT_USAGE
        report = update_from(source, state_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="douane-fetch-") as folder:
            for failure in fetch_sources(Path(folder)):
                print(f"douane update-db: not fetched: {failure}", file=sys.stderr)
            report = update_from(Path(folder), state_dir)
    for line in report.ignored:
        print(f"douane update-db: ignored {line}", file=sys.stderr)
    for line in report.refused:
        print(f"douane update-db: refused {line}", file=sys.stderr)
    if not report.ok:
        print(f"douane update-db: nothing changed in {state_dir}; the data in use stays", file=sys.stderr)
        return EXIT_PROBLEM
    for line in report.installed:
        print(f"douane update-db: verified {line}")
    print(f"douane update-db: {state_dir}/current -> {report.generation}; a running daemon picks it up "
          "on SIGHUP")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.log_level, config.log_format)
    geo = GeoDatabases(geo_config(config))
    geo.start()
    problems = list(geo.problems())
    problems += load_jurisdictions(geo_files(config).ranges_dir).problems()
    policy = load_policy(config)  # a bad policy raises PolicyError, reported like a bad config
    if config.exporter_cert is not None:
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(config.exporter_cert), str(config.exporter_key))
            if config.exporter_client_ca is not None:
                context.load_verify_locations(str(config.exporter_client_ca))
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{config.source}: key 'exporter.tls': unusable certificate, key or "
                            f"client CA ({exc})")
    if config.capture.pcap is not None and not config.capture.pcap.is_file():
        problems.append(f"{config.source}: key 'capture.pcap': no such file {config.capture.pcap}")
    if config.capture.collector is not None and not config.capture.collector.exporters:
        problems.append(f"{config.source}: key 'capture.collector.exporters': no exporter listed, "
                        "every datagram would be refused")
    for problem in problems:
        print(f"douane check: {problem}", file=sys.stderr)
    if problems:
        return EXIT_PROBLEM
    print(f"douane check: {config.source}: configuration valid; "
          + ", ".join(f"{db.name} database {db.path}" for db in geo.databases()) + " readable; "
          + f"policy {policy.source}: {len(policy.rules)} rules, {len(policy.exceptions)} exceptions")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    configure_logging("warning")
    geo = GeoDatabases(GeoConfig())
    geo.start()
    print(f"douane {__version__}")
    for db in geo.databases():
        built = db.build_time.date().isoformat() if db.build_time else "unknown date"
        print(f"  {db.name} database: {db.path} (built {built}; {db.source}, {db.licence})")
    print()
    print(ATTRIBUTION)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="douane",
        description="Watches what leaves a network and says, flow by flow, where the data goes "
        "and under which jurisdiction.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", metavar="CFG", help="configuration file (YAML)")

    p = sub.add_parser("replay", help="run the whole pipeline over a pcap or pcapng file")
    p.add_argument("file", metavar="FILE", help="pcap or pcapng capture")
    add_config(p)
    p.add_argument("--json", action="store_true", help="print one flow record (JSON) per line")
    p.add_argument("--metrics-out", metavar="PATH", help="write the Prometheus metrics at the end")
    p.add_argument("--serve", metavar="ADDR", help="then serve the metrics on ADDR (host:port)")
    p.add_argument("--evidence", metavar="PATH",
                   help="keep flagged flows in this SQLite evidence store (overrides evidence.path)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="the daemon: capture live on capture.interface, receive flow "
                       "records from capture.collector's exporters, or both")
    add_config(p)
    p.add_argument("--json", action="store_true", help="also print one flow record (JSON) per line")
    # Internal: how the parent of `capture.workers` starts each worker.
    p.add_argument("--worker-of", type=int, metavar="GROUP", help=argparse.SUPPRESS)
    p.add_argument("--exporter", metavar="ADDR", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("collect", help="receive NetFlow v5/v9 and IPFIX from the exporters listed in "
                       "capture.collector and declare their flows (the daemon, without capture)")
    add_config(p)
    p.add_argument("--json", action="store_true", help="also print one flow record (JSON) per line")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("demo", help="replay the demo capture shipped with douane")
    p.add_argument("--json", action="store_true", help="print one flow record (JSON) per line")
    p.add_argument("--evidence", metavar="PATH", help="keep flagged flows in this SQLite evidence store")
    p.add_argument("--metrics-out", metavar="PATH", help="write the Prometheus metrics at the end")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("lookup", help="where an address or host name goes, who controls it, "
                       "which laws reach it, and why")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS|HOSTNAME")
    add_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per address")
    p.set_defaults(func=cmd_lookup)

    p = sub.add_parser("update-db", help="fetch (or take --from DIR) fresh geo data, verify it and "
                       "swap it into the state directory")
    p.add_argument("--from", dest="source", metavar="DIR",
                   help="use the files in DIR (copied by hand) instead of downloading")
    p.add_argument("--state-dir", metavar="DIR", help="instead of geo.state_dir")
    add_config(p)
    p.set_defaults(func=cmd_update_db)

    p = sub.add_parser("check", help="validate the configuration and the databases")
    add_config(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("version", help="version, database dates and data attribution")
    p.set_defaults(func=cmd_version)

    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except ConfigError as exc:
        print(f"douane: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `douane replay --json | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    return status


if __name__ == "__main__":
    sys.exit(main())
