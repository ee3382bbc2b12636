"""Collector benchmark: NetFlow v9 / IPFIX records decoded, then declared, next to douane replay.

Run by hand; it prints figures and never fails on them::

    python bench/collector.py                       # 200,000 records per protocol, replay baseline
    python bench/collector.py --records 50000 --no-replay
    python bench/collector.py --profile ipfix       # cProfile of the full path, top 25

Datagrams are built in memory the way ``tests/daemon/test_netflow.py`` builds them: one template set
(an IPv4 and an IPv6 template, the fields most exporters send) at the start and again every 20
datagrams, then data sets of about 1,400 bytes. 80 % of records are IPv4, 20 % IPv6; sources are
internal hosts, destinations spread over a few thousand addresses and server ports, so that the
enrichment caches see a realistic mix of hits and misses.

Three figures per protocol, in one process and one run:

- **decode**: ``Decoder.decode`` on every datagram, records kept in a list and dropped.
- **collector**: ``FlowCollector.handle`` with the pipeline ``douane collect`` builds
  (``Replay.build(config, source="collector")``, geo databases started, GC tuned as the
  runner does): allow-list check, decode, ``record_to_flow``, ``pipeline.on_close`` (enrichment, policy,
  metrics, summary). Socket reads are not included: a loopback UDP path is measured separately
  (``--udp``) because the kernel, not douane, bounds it.
- **replay** (baseline): ``douane replay`` on the benchmark capture (``bench/mixed_capture.py``),
  measured as ``bench/replay.py`` measures it (child process, start-up included), with the flows it
  declared per second next to its packets per second: a replay declares one flow per many packets,
  the collector one per record.

Issue 7's target is 100,000 flow records per second on one core, decoded and declared.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import pstats
import random
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from douane.daemon.cli import Replay
    from douane.daemon.collector import FlowCollector

TARGET_RECORDS_PER_SECOND = 100_000
EXPORTER = "192.0.2.1"
NOW = 1_800_000_000.0
DATAGRAM_BYTES = 1_400  # what exporters fill to stay under a 1,500-byte MTU
TEMPLATE_EVERY = 20  # datagrams between template refreshes

# (IE, length): IPv4 / IPv6 5-tuple, TCP flags, counters, millisecond start and end (IPFIX), or
# sysUpTime first/last switched (v9), plus the direction: the shape FortiGate, softflowd and Cisco
# Flexible NetFlow records mostly have.
IPFIX_V4 = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (152, 8), (153, 8), (61, 1))
IPFIX_V6 = ((27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (152, 8), (153, 8), (61, 1))
V9_V4 = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (22, 4), (21, 4), (61, 1))
V9_V6 = ((27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (22, 4), (21, 4), (61, 1))
TID_V4, TID_V6 = 256, 257
UPTIME_MS = 3_600_000  # the v9 exporter has been up an hour


def a_set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def template(template_id: int, fields: tuple[tuple[int, int], ...]) -> bytes:
    return struct.pack("!HH", template_id, len(fields)) + b"".join(struct.pack("!HH", *f) for f in fields)


@dataclass
class Workload:
    protocol: str
    datagrams: list[bytes]
    records: int
    payload_bytes: int


def _hosts(rng: random.Random) -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
    inside4 = [bytes([10, rng.randrange(1, 60), rng.randrange(256), rng.randrange(1, 255)])
               for _ in range(800)]
    inside6 = [ipaddress.IPv6Address(f"fd00:{rng.randrange(1, 60):x}::{rng.randrange(1, 65535):x}").packed
               for _ in range(200)]
    # Provider ranges as in mixed_capture.py, so that geo and ASN lookups find real answers.
    prefixes4 = ["142.250.0.0/15", "20.190.128.0/18", "51.68.0.0/16", "95.216.0.0/16", "52.94.0.0/16",
                 "104.16.0.0/13", "157.240.0.0/16", "163.172.0.0/16", "8.8.8.0/24", "1.1.1.0/24"]
    prefixes6 = ["2a00:1450::/32", "2603:1000::/24", "2001:41d0::/32", "2a01:4f8::/32", "2606:4700::/32"]
    outside4 = []
    for _ in range(3000):
        net = ipaddress.IPv4Network(rng.choice(prefixes4))
        outside4.append((net.network_address + rng.randrange(net.num_addresses)).packed)
    outside6 = []
    for _ in range(600):
        net = ipaddress.IPv6Network(rng.choice(prefixes6))
        outside6.append((net.network_address + rng.randrange(1 << 32)).packed)
    return inside4, inside6, outside4, outside6


def build(protocol: str, records: int, seed: int) -> Workload:
    """`records` flow records as NetFlow v9 (`netflow9`) or IPFIX (`ipfix`) datagrams."""
    rng = random.Random(seed)
    inside4, inside6, outside4, outside6 = _hosts(rng)
    ipfix = protocol == "ipfix"
    f4, f6 = (IPFIX_V4, IPFIX_V6) if ipfix else (V9_V4, V9_V6)
    tail = struct.Struct("!HHBBIIQQB" if ipfix else "!HHBBIIIIB")
    templates = a_set(2 if ipfix else 0, template(TID_V4, f4) + template(TID_V6, f6))
    ports = [443] * 8 + [80, 53, 123, 993, 8443, 3478]
    datagrams: list[bytes] = []
    payload = 0
    made = 0
    sequence = 0
    now_ms = int(NOW * 1000)
    while made < records:
        sets: list[bytes] = []
        room = DATAGRAM_BYTES - (16 if ipfix else 20)  # the message header
        if len(datagrams) % TEMPLATE_EVERY == 0:
            sets.append(templates)
            room -= len(templates)
        v6 = rng.random() < 0.2
        size = (32 if v6 else 8) + tail.size
        count = min((room - 4) // size, records - made)
        body = bytearray()
        for _ in range(count):
            if v6:
                src, dst = rng.choice(inside6), rng.choice(outside6)
            else:
                src, dst = rng.choice(inside4), rng.choice(outside4)
            sport, dport = rng.randrange(32768, 61000), rng.choice(ports)
            proto = 17 if dport in (53, 123, 3478) else 6
            packets = rng.randrange(1, 400)
            octets = packets * rng.randrange(60, 1400)
            if rng.random() < 0.5:  # the server's side of the connection, as uni-directional exporters send
                src, dst, sport, dport = dst, src, dport, sport
            end_ms = now_ms - rng.randrange(0, 60_000)
            start_ms = end_ms - rng.randrange(0, 120_000)
            if ipfix:
                times = (start_ms, end_ms)
            else:
                up = UPTIME_MS
                times = (up - (now_ms - start_ms), up - (now_ms - end_ms))
            body += src + dst + tail.pack(sport, dport, proto, 0x1B if proto == 6 else 0, packets, octets,
                                          *times, rng.randrange(2))
        sets.append(a_set(TID_V6 if v6 else TID_V4, bytes(body)))
        made += count
        content = b"".join(sets)
        if ipfix:
            datagram = struct.pack("!HHIII", 10, 16 + len(content), int(NOW), sequence, 1) + content
            sequence += count  # IPFIX counts data records
        else:
            datagram = struct.pack("!HHIIII", 9, len(sets), UPTIME_MS, int(NOW), sequence, 1) + content
            sequence += 1  # NetFlow v9 counts export packets
        datagrams.append(datagram)
        payload += len(datagram)
    return Workload(protocol, datagrams, made, payload)


@dataclass
class Figure:
    protocol: str
    stage: str
    records: int
    seconds: float
    cpu_seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    began, began_cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - began, time.process_time() - began_cpu


def measure_decode(work: Workload) -> Figure:
    from douane.daemon.netflow import Decoder, DecoderConfig  # noqa: PLC0415

    decoder = Decoder(DecoderConfig())
    decoded = [0]

    def run() -> None:
        decode = decoder.decode
        total = 0
        for data in work.datagrams:
            records = decode(data, EXPORTER, NOW)
            total += len(records) if records else 0
        decoded[0] = total

    wall, cpu = _timed(run)
    stats = decoder.stats[EXPORTER]
    note = _check(work, decoded[0], stats.sequence_gaps, stats.malformed, stats.unknown_template)
    return Figure(work.protocol, "decode only", decoded[0], wall, cpu, note)


def _check(work: Workload, decoded: int, gaps: int, malformed: int, unknown: int) -> str:
    problems = []
    if decoded != work.records:
        problems.append(f"decoded {decoded:,} of {work.records:,}")
    if gaps or malformed or unknown:
        problems.append(f"gaps {gaps}, malformed {malformed}, unknown template {unknown}")
    return "; ".join(problems)


def build_collect(config_path: Path | None) -> tuple[Replay, FlowCollector]:
    """The pipeline and collector as `douane collect` wires them, without the socket or HTTP."""
    from douane.daemon.cli import Replay, tune_gc  # noqa: PLC0415
    from douane.daemon.collector import CollectorMetrics, FlowCollector  # noqa: PLC0415
    from douane.daemon.config import load_config, parse_config  # noqa: PLC0415

    if config_path is not None:
        config = load_config(config_path)
    else:
        collector = {"listen": "127.0.0.1:2055", "exporters": [EXPORTER]}  # listen: not bound here
        config = parse_config({"capture": {"collector": collector}}, "bench")
    settings = config.capture.collector
    if settings is None or EXPORTER not in settings.exporters:
        raise SystemExit(f"the configuration must list {EXPORTER} in capture.collector.exporters")
    daemon = Replay.build(config, [], source="collector")
    collector = FlowCollector(settings, daemon.pipeline.on_close)
    daemon.registry.register(CollectorMetrics(collector))
    daemon.geo.start()
    tune_gc()
    return daemon, collector


def measure_collect(work: Workload, config_path: Path | None) -> tuple[Figure, Replay]:
    daemon, collector = build_collect(config_path)
    declared = [0]

    def run() -> None:
        handle = collector.handle
        total = 0
        for data in work.datagrams:
            total += handle(data, EXPORTER, NOW)
        declared[0] = total

    wall, cpu = _timed(run)
    stats = collector.decoder.stats[EXPORTER]
    note = _check(work, declared[0], stats.sequence_gaps, stats.malformed, stats.unknown_template)
    if collector.errors:
        note = "; ".join(filter(None, [note, f"{collector.errors} records failed"]))
    return Figure(work.protocol, "decode + declare", declared[0], wall, cpu, note), daemon


def measure_udp(work: Workload, config_path: Path | None) -> Figure:
    """The same through a loopback socket and `FlowCollector.serve`, paced by a sender thread.

    The sender waits for the receiver to catch up every 64 datagrams so that the kernel's buffer
    never overflows; the figure is therefore a lower bound shaped by the pacing too.
    """
    from douane.daemon.cli import Replay, tune_gc  # noqa: PLC0415
    from douane.daemon.collector import CollectorConfig, FlowCollector  # noqa: PLC0415
    from douane.daemon.config import Config  # noqa: PLC0415

    config = Config()
    daemon = Replay.build(config, [], source="collector")
    daemon.geo.start()
    tune_gc()
    collector = FlowCollector(CollectorConfig(listen="127.0.0.1:0", exporters=("127.0.0.1",)),
                              daemon.pipeline.on_close)
    collector.start()
    stop = threading.Event()
    server = threading.Thread(target=collector.serve, args=(stop,), daemon=True)
    server.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = collector.address
    began, began_cpu = time.perf_counter(), time.process_time()
    for index, data in enumerate(work.datagrams):
        sender.sendto(data, target)
        if index % 64 == 63:
            while collector.decoder.stats["127.0.0.1"].datagrams < index - 32:
                time.sleep(0.0002)
    deadline = time.perf_counter() + 10
    stats = collector.decoder.stats["127.0.0.1"]
    while stats.datagrams < len(work.datagrams) and time.perf_counter() < deadline:
        time.sleep(0.001)
    wall, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    stop.set()
    server.join()
    collector.stop()
    sender.close()
    note = _check(work, stats.records, stats.sequence_gaps, stats.malformed, stats.unknown_template)
    return Figure(work.protocol, "UDP loopback + declare", stats.records, wall, cpu,
                  (note + "; " if note else "") + "two threads, paced sender; cpu is the process's")


def measure_replay(packets: int, douane: str | None) -> tuple[Figure, Figure]:
    """`douane replay` on the benchmark capture, as bench/replay.py measures it: packets/s and
    flows/s of the same run. Raises RuntimeError when douane is missing or fails."""
    sys.path.insert(0, str(Path(__file__).parent))
    from mixed_capture import DEFAULT_RATE, DEFAULT_SEED, OUT_DIR, cached_capture  # noqa: PLC0415
    from replay import find_douane, measure_douane, warm_page_cache  # noqa: PLC0415

    binary = find_douane(douane)
    if binary is None:
        raise RuntimeError("douane not found next to this python nor on PATH")
    path, info = cached_capture(packets, DEFAULT_SEED, DEFAULT_RATE, OUT_DIR, False)
    warm_page_cache(path)
    run = measure_douane(binary, path, info.packets)
    flows = int(run.extra.get("flows_created") or 0)
    cpu = run.cpu_seconds or 0.0
    return (
        Figure("pcap", "douane replay (packets)", info.packets, run.wall_seconds, cpu,
               run.note or f"{path.name}; start-up included"),
        Figure("pcap", "douane replay (flows)", flows, run.wall_seconds, cpu,
               "flows declared in the same run"),
    )


def print_table(figures: list[Figure]) -> None:
    print(f"{'input':<9} {'stage':<26} {'count':>9} {'wall s':>8} {'cpu s':>8} {'per second':>11}  note")
    for f in figures:
        print(f"{f.protocol:<9} {f.stage:<26} {f.records:>9,} {f.seconds:>8.3f} {f.cpu_seconds:>8.3f} "
              f"{f.rate:>11,.0f}  {f.note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="collector benchmark (figures, no assertions)")
    parser.add_argument("--records", type=int, default=200_000, help="flow records per protocol")
    parser.add_argument("--protocols", nargs="+", default=["ipfix", "netflow9"],
                        choices=["ipfix", "netflow9"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each stage; the fastest is kept")
    parser.add_argument("--config", type=Path, help="douane configuration (must list 192.0.2.1 as exporter)")
    parser.add_argument("--udp", action="store_true", help="also measure through a loopback UDP socket")
    parser.add_argument("--replay-packets", type=int, default=250_000,
                        help="replay baseline capture size (default: %(default)s, cached in bench/out)")
    parser.add_argument("--no-replay", dest="replay", action="store_false", help="skip the replay baseline")
    parser.add_argument("--douane", help="douane executable for the replay baseline")
    parser.add_argument("--profile", choices=["ipfix", "netflow9"],
                        help="only profile decode + declare for this protocol and print the top 25")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import douane.daemon.netflow  # noqa: F401, PLC0415
    except ImportError as exc:
        print(f"douane is not importable ({exc}); run: pip install -e .", file=sys.stderr)
        return 2

    if args.profile:
        work = build(args.profile, args.records, args.seed)
        _daemon, collector = build_collect(args.config)
        profiler = cProfile.Profile()
        profiler.enable()
        for data in work.datagrams:
            collector.handle(data, EXPORTER, NOW)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(pstats.SortKey.TIME).print_stats(25)
        return 0

    figures: list[Figure] = []
    best: dict[tuple[str, str], Figure] = {}
    for protocol in args.protocols:
        began = time.perf_counter()
        work = build(protocol, args.records, args.seed)
        print(f"{protocol}: {work.records:,} records in {len(work.datagrams):,} datagrams "
              f"({work.payload_bytes / len(work.datagrams):,.0f} bytes each; built in "
              f"{time.perf_counter() - began:.1f} s)", flush=True)
        decode = min((measure_decode(work) for _ in range(max(1, args.repeat))), key=lambda f: f.seconds)
        collect = min((measure_collect(work, args.config)[0] for _ in range(max(1, args.repeat))),
                      key=lambda f: f.seconds)
        figures += [decode, collect]
        best[(protocol, "decode")], best[(protocol, "collect")] = decode, collect
        if args.udp:
            figures.append(measure_udp(work, args.config))

    replay_packets: Figure | None = None
    replay_flows: Figure | None = None
    replay_problem = ""
    if args.replay:
        try:
            replay_packets, replay_flows = measure_replay(args.replay_packets, args.douane)
        except (RuntimeError, OSError) as exc:
            replay_problem = str(exc)
        else:
            figures += [replay_packets, replay_flows]

    print()
    print_table(figures)
    print()
    for protocol in args.protocols:
        decode, collect = best[(protocol, "decode")], best[(protocol, "collect")]
        verdict = "meets" if collect.rate >= TARGET_RECORDS_PER_SECOND else "below"
        print(f"{protocol:<9} declared records/s = {collect.rate:>9,.0f}  "
              f"({collect.rate / TARGET_RECORDS_PER_SECOND:.2f}x issue 7's {TARGET_RECORDS_PER_SECOND:,}: "
              f"{verdict}); decoding alone is {decode.rate / collect.rate:.1f}x faster, "
              f"{(1 - decode.seconds / collect.seconds) * 100:.0f} % of the time is spent after the decoder")
        if replay_packets is not None and replay_flows is not None:
            print(f"{'':<9} vs replay: records/s / packets/s = {collect.rate / replay_packets.rate:.2f}x, "
                  f"records/s / replay flows/s = {collect.rate / max(replay_flows.rate, 1):.2f}x")
    if replay_problem:
        print(f"\n! replay baseline skipped: {replay_problem}", file=sys.stderr)
    if shutil.which("softflowd") is None:
        print("(softflowd not installed: the datagrams are built in process, as the tests build them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
