"""Replay benchmark: douane end to end next to scapy's dissection and softflowd, in one run.

Run by hand or in CI; it prints figures and never fails on wall time::

    python bench/replay.py                      # 1M packets, memory at 250k/500k/1M, table
    python bench/replay.py --packets 200000 --json-out /tmp/bench.json
    python bench/replay.py --profile            # cProfile of an in-process replay, top 25

The capture comes from ``bench/mixed_capture.py`` and is cached under ``bench/out/``. The figures
that matter are the ratios, which depend less on the machine than packets per second do: the issue's
targets are douane >= 50x scapy's full dissection and within 3x of softflowd, on one core, with a
maximum RSS that stays flat as the file grows.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import scapy

# Run as a script (`python bench/replay.py`), so the generator is a sibling module on sys.path.
from mixed_capture import (
    DEFAULT_PACKETS,
    DEFAULT_RATE,
    DEFAULT_SEED,
    OUT_DIR,
    CaptureInfo,
    cached_capture,
)
from scapy.sendrecv import sniff

DEFAULT_SCAPY_PACKETS = 20_000
TARGET_VS_SCAPY = 50.0  # douane must be at least this many times faster than scapy's dissection
TARGET_VS_SOFTFLOWD = 3.0  # softflowd may be at most this many times faster than douane


@dataclass
class Run:
    """One measured run of one tool."""

    tool: str
    packets: int
    wall_seconds: float
    cpu_seconds: float | None = None
    max_rss_kib: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class ChildResult:
    """Wall time and the resources of one child process (not of every child so far)."""

    returncode: int
    wall_seconds: float
    cpu_seconds: float
    max_rss_kib: int
    stdout: str
    stderr: str


# Forks and measures the command in argv[3:], then writes "exit wall cpu maxrss" to argv[1].
# The fork must come from a small process: a child's ru_maxrss counts the memory of the process it
# was forked from (Linux keeps the pre-exec high-water mark across execve), so a tool forked from
# this benchmark, which holds scapy, would report at least this benchmark's size.
_LAUNCHER = """
import os, signal, sys, time
report, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
began = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - began
signal.setitimer(signal.ITIMER_REAL, 0)
with open(report, "w") as f:
    cpu = usage.ru_utime + usage.ru_stime
    f.write(f"{os.waitstatus_to_exitcode(status)} {wall} {cpu} {usage.ru_maxrss}")
"""


def run_child(argv: list[str], keep_stdout: bool = False, timeout: float = 1800) -> ChildResult:
    """Run ``argv`` and measure its wall time, CPU time and maximum RSS.

    ``wait4`` gives the rusage of that child alone (``getrusage(RUSAGE_CHILDREN)`` would report
    the largest RSS of all children so far, hiding a smaller run after a bigger one). The RSS
    includes the launcher's few MiB at fork time: see ``rss_floor_kib``. Output goes to temporary
    files, not pipes, so that a chatty child never blocks on a full pipe. A child still running
    after ``timeout`` seconds is killed (a hung baseline must not hang CI); its return code is -9.
    """
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        report = Path(tmp) / "rusage"
        subprocess.run(
            [sys.executable, "-S", "-I", "-c", _LAUNCHER, str(report), str(timeout), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out if keep_stdout else subprocess.DEVNULL,
            stderr=err,
            check=True,
        )
        code, wall, cpu, rss = report.read_text().split()
        out.seek(0)
        err.seek(0)
        return ChildResult(
            returncode=int(code),
            wall_seconds=float(wall),
            cpu_seconds=float(cpu),
            max_rss_kib=int(rss),  # KiB on Linux
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def _failure(tool: str, child: ChildResult) -> str:
    if child.returncode == -9:
        return f"{tool} killed after {child.wall_seconds:.0f} s (timeout)"
    return f"{tool} exited with {child.returncode}:\n{child.stderr[-2000:]}"


def rss_floor_kib() -> int:
    """The max RSS reported for a command that allocates nothing: the launcher's share."""
    true = shutil.which("true") or "/bin/true"
    return run_child([true]).max_rss_kib


def warm_page_cache(path: Path) -> None:
    """Read the file once so that whichever tool runs first does not pay for the disk."""
    with path.open("rb") as f:
        while f.read(8 << 20):
            pass


def find_douane(explicit: str | None) -> str | None:
    """The douane next to this interpreter (the venv it was installed in), else on PATH."""
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    sibling = Path(sys.executable).parent / "douane"
    if sibling.exists():
        return str(sibling)
    return shutil.which("douane")


def metric_sum(exposition: str, name: str) -> float | None:
    """Sum of every sample of ``name`` in a Prometheus text exposition, None when absent."""
    values = [
        float(m.group(1))
        for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", exposition, re.M)
    ]
    return sum(values) if values else None


def measure_douane(douane: str, capture: Path, packets: int) -> Run:
    """``douane replay FILE`` end to end, summary discarded.

    The metrics go to a temporary file rather than /dev/null so that the benchmark can check that
    douane saw every packet: a fast run that skipped the file would be a false result.
    """
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.prom"
        child = run_child([douane, "replay", str(capture), "--metrics-out", str(metrics)])
        exposition = metrics.read_text() if metrics.exists() else ""
    if child.returncode != 0:
        raise RuntimeError(_failure("douane replay", child))
    seen = metric_sum(exposition, "douane_packets_total")
    flows = metric_sum(exposition, "douane_flows_created_total")
    note = ""
    if seen is None:
        note = "douane_packets_total missing from the metrics"
    elif int(seen) != packets:
        note = f"douane counted {int(seen):,} packets, the file has {packets:,}"
    return Run(
        tool="douane replay",
        packets=packets,
        wall_seconds=child.wall_seconds,
        cpu_seconds=child.cpu_seconds,
        max_rss_kib=child.max_rss_kib,
        note=note,
        extra={"packets_counted": seen, "flows_created": flows},
    )


def measure_scapy(capture: Path, count: int) -> Run:
    """scapy's ``sniff(offline=...)`` with full dissection of every layer it knows, no storage."""
    began_cpu = time.process_time()
    began = time.perf_counter()
    sniff(offline=str(capture), count=count, store=False, prn=lambda _pkt: None)
    return Run(
        tool="scapy sniff(offline)",
        packets=count,
        wall_seconds=time.perf_counter() - began,
        cpu_seconds=time.process_time() - began_cpu,
        note=f"first {count:,} packets, in process",
    )


class _Collector:
    """A UDP socket on loopback that drains softflowd's export, so that the export is real work."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65_535)
            except TimeoutError:
                continue
            self.datagrams += 1

    def __enter__(self) -> _Collector:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        time.sleep(0.2)  # let the last datagrams arrive
        self._stop.set()
        self._thread.join()
        self.sock.close()


def measure_softflowd(softflowd: str, capture: Path, packets: int, version: str) -> Run:
    """``softflowd -r FILE`` in the foreground, exporting to a local collector.

    ``-6`` makes softflowd track IPv6: without it, every IPv6 packet is skipped as "non-IP" and
    softflowd would do less work than douane. ``-v 9`` rather than 5 because NetFlow v5 cannot
    carry IPv6 flows. ``-d`` keeps it in the foreground; it exits on its own at pcap EOF.
    ``-c none`` disables the control socket: with one, softflowd 1.1.0 sometimes blocks in
    ``accept()`` on it before reading the file and never exits (seen with a socket path under a
    fresh temporary directory).
    """
    with tempfile.TemporaryDirectory() as tmp, _Collector() as collector:
        child = run_child(
            [
                softflowd,
                "-r",
                str(capture),
                "-n",
                f"127.0.0.1:{collector.port}",
                "-v",
                version,
                "-6",
                "-d",
                "-p",
                str(Path(tmp) / "softflowd.pid"),
                "-c",
                "none",
            ],
            keep_stdout=True,
        )
    if child.returncode != 0:
        raise RuntimeError(_failure("softflowd", child))
    # softflowd prints its statistics at exit; they show whether it read the whole file.
    text = child.stdout + child.stderr
    processed = _first_int(r"Packets processed: (\d+)", text)
    ignored = _first_int(r"Ignored packets: (\d+)", text)
    flows = _first_int(r"Flows expired: (\d+)", text)
    note = ""
    if processed is not None and ignored is not None and processed + ignored != packets:
        note = f"softflowd read {processed + ignored:,} of {packets:,} packets"
    elif ignored:
        note = f"{ignored:,} packets ignored as non-IP (softflowd does not parse QinQ)"
    return Run(
        tool=f"softflowd -r (-v {version} -6)",
        packets=packets,
        wall_seconds=child.wall_seconds,
        cpu_seconds=child.cpu_seconds,
        max_rss_kib=child.max_rss_kib,
        note=note,
        extra={
            "packets_processed": processed,
            "packets_ignored": ignored,
            "flows_expired": flows,
            "export_datagrams_received": collector.datagrams,
        },
    )


def _first_int(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def best_of(repeat: int, measure: Callable[[], Run]) -> Run:
    """The fastest of ``repeat`` runs: noise only ever slows a run down."""
    runs = [measure() for _ in range(max(1, repeat))]
    return min(runs, key=lambda r: r.wall_seconds)


def profile_douane(capture: Path, top: int = 25) -> None:
    """Replay in process under cProfile and print the ``top`` functions by own time."""
    # Imported here: the rest of the benchmark runs (and says so) when douane is not installed.
    from douane.daemon.cli import main as douane_main  # noqa: PLC0415

    profiler = cProfile.Profile()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.suppress(SystemExit):
        profiler.runcall(douane_main, ["replay", str(capture), "--metrics-out", os.devnull])
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:,.1f}" if kib is not None else "-"


def _cpu(seconds: float | None) -> str:
    return f"{seconds:,.2f}" if seconds is not None else "-"


def print_table(runs: list[Run]) -> None:
    print(
        f"{'tool':<28} {'packets':>10} {'wall s':>8} {'cpu s':>8} {'packets/s':>11} {'max RSS MiB':>12}  note"
    )
    for r in runs:
        print(
            f"{r.tool:<28} {r.packets:>10,} {r.wall_seconds:>8.2f} {_cpu(r.cpu_seconds):>8} "
            f"{r.packets_per_second:>11,.0f} {_mib(r.max_rss_kib):>12}  {r.note}"
        )


def ratio_lines(
    douane: Run | None, scapy: Run | None, softflowd: Run | None
) -> tuple[list[str], dict[str, float | None]]:
    """The two ratios the issue sets targets for, as printable lines and as numbers."""
    lines = []
    figures: dict[str, float | None] = {"douane_over_scapy": None, "softflowd_over_douane": None}
    if douane and scapy:
        value = douane.packets_per_second / scapy.packets_per_second
        figures["douane_over_scapy"] = round(value, 2)
        verdict = "meets" if value >= TARGET_VS_SCAPY else "below"
        lines.append(f"douane / scapy      = {value:7.1f}x   (target >= {TARGET_VS_SCAPY:g}x: {verdict})")
    else:
        lines.append("douane / scapy      =     n/a")
    if douane and softflowd:
        value = softflowd.packets_per_second / douane.packets_per_second
        figures["softflowd_over_douane"] = round(value, 2)
        verdict = "meets" if value <= TARGET_VS_SOFTFLOWD else "misses"
        lines.append(f"softflowd / douane  = {value:7.1f}x   (target <= {TARGET_VS_SOFTFLOWD:g}x: {verdict})")
    else:
        lines.append("softflowd / douane  =     n/a")
    return lines, figures


def environment(douane: str | None, softflowd: str | None) -> dict[str, Any]:
    """What the figures depend on besides the code."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "scapy": scapy.__version__,
    }
    if douane:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([douane, "version"], check=False, capture_output=True, text=True, timeout=60)
            info["douane"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    if softflowd:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([softflowd, "-h"], check=False, capture_output=True, text=True, timeout=10)
            match = re.search(r"softflowd version (\S+)", out.stdout + out.stderr)
            info["softflowd"] = match.group(1).rstrip(".") if match else "unknown"
    return info


def _capture(packets: int, args: argparse.Namespace) -> tuple[Path, CaptureInfo]:
    began = time.perf_counter()
    path, info = cached_capture(packets, args.seed, args.rate, args.out_dir, args.regenerate)
    took = time.perf_counter() - began
    origin = f"generated in {info.generation_seconds:.1f} s" if took > 1 else "cached"
    print(
        f"capture: {path} ({info.packets:,} packets, {info.flows:,} flows, "
        f"{info.duration_seconds:,.0f} s of traffic; {origin})",
        flush=True,
    )
    return path, info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="douane replay benchmark against scapy and softflowd (figures, no assertions)"
    )
    parser.add_argument(
        "--packets", type=int, default=DEFAULT_PACKETS, help="packets in the capture (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--rate",
        type=int,
        default=DEFAULT_RATE,
        help="packets per second of capture time (default: %(default)s)",
    )
    parser.add_argument(
        "--scapy-packets",
        type=int,
        default=DEFAULT_SCAPY_PACKETS,
        help="prefix dissected by scapy (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of douane and softflowd, the fastest is kept (default: 1)"
    )
    parser.add_argument(
        "--no-memory-scaling",
        dest="memory_scaling",
        action="store_false",
        help="skip the douane runs at 1/4 and 1/2 of --packets",
    )
    parser.add_argument("--douane", help="douane executable (default: next to python, or PATH)")
    parser.add_argument("--softflowd", default="softflowd", help="softflowd executable")
    parser.add_argument(
        "--softflowd-version",
        default="9",
        choices=["5", "9", "10"],
        help="NetFlow version softflowd exports (default: 9, which carries IPv6)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="capture cache directory")
    parser.add_argument("--regenerate", action="store_true", help="rebuild cached captures")
    parser.add_argument(
        "--profile", action="store_true", help="only profile an in-process douane replay and print the top 25"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    capture, info = _capture(args.packets, args)

    if args.profile:
        try:
            profile_douane(capture)
        except ImportError as exc:
            print(f"douane is not importable ({exc}); run: pip install -e .", file=sys.stderr)
            return 2
        return 0

    douane = find_douane(args.douane)
    softflowd = shutil.which(args.softflowd)
    floor = rss_floor_kib()
    warm_page_cache(capture)
    runs: list[Run] = []
    problems: list[str] = []

    douane_run: Run | None = None
    if douane is None:
        problems.append(
            "douane: not found next to this python nor on PATH "
            "(install it with `pip install -e .`, or pass --douane)"
        )
    else:
        try:
            douane_run = best_of(args.repeat, lambda: measure_douane(douane, capture, info.packets))
            runs.append(douane_run)
        except RuntimeError as exc:
            problems.append(str(exc))

    scapy_packets = min(args.scapy_packets, info.packets)
    scapy_run = measure_scapy(capture, scapy_packets)
    runs.append(scapy_run)

    softflowd_run: Run | None = None
    if softflowd is None:
        problems.append(
            f"softflowd: not installed ({args.softflowd!r} not on PATH), skipped; "
            "on Debian: apt-get install softflowd"
        )
    else:
        try:
            softflowd_run = best_of(
                args.repeat,
                lambda: measure_softflowd(softflowd, capture, info.packets, args.softflowd_version),
            )
            runs.append(softflowd_run)
        except RuntimeError as exc:
            problems.append(str(exc))

    scaling: list[dict[str, Any]] = []
    if args.memory_scaling and douane is not None and douane_run is not None:
        for size in (args.packets // 4, args.packets // 2):
            path, small = _capture(size, args)
            warm_page_cache(path)
            run = measure_douane(douane, path, small.packets)
            scaling.append(
                {
                    "packets": small.packets,
                    "flows": small.flows,
                    "capture_seconds": small.duration_seconds,
                    **_scaling_row(run),
                }
            )
        scaling.append(
            {
                "packets": info.packets,
                "flows": info.flows,
                "capture_seconds": info.duration_seconds,
                **_scaling_row(douane_run),
            }
        )

    print(
        f"\ndouane replay benchmark: {info.packets:,} packets, {info.flows:,} flows "
        f"(seed {info.seed}, {info.duration_seconds:,.0f} s of traffic at {info.rate} packets/s; "
        f"capture generated in {info.generation_seconds:.1f} s)\n"
    )
    print_table(runs)
    print(
        f"(max RSS includes about {_mib(floor)} MiB of the measuring launcher: "
        "what it reports for `true`; scapy runs inside the benchmark, so it has none)"
    )
    lines, ratios = ratio_lines(douane_run, scapy_run, softflowd_run)
    print()
    print("\n".join(lines))
    if scaling:
        print("\nmemory as the file grows (douane replay):")
        print(
            f"{'packets':>10} {'flows':>8} {'capture s':>10} {'wall s':>8} {'packets/s':>11} "
            f"{'max RSS MiB':>12}"
        )
        for row in scaling:
            print(
                f"{row['packets']:>10,} {row['flows']:>8,} {row['capture_seconds']:>10,.0f} "
                f"{row['wall_seconds']:>8.2f} {row['packets_per_second']:>11,.0f} "
                f"{_mib(row['max_rss_kib']):>12}"
            )
        first, last = scaling[0], scaling[-1]
        if last["wall_seconds"] > first["wall_seconds"]:
            # The difference between two sizes cancels the fixed start-up cost (imports, geo
            # databases): what is left is the per-packet rate of the pipeline itself.
            marginal = (last["packets"] - first["packets"]) / (last["wall_seconds"] - first["wall_seconds"])
            print(
                f"marginal rate between {first['packets']:,} and {last['packets']:,} packets: "
                f"{marginal:,.0f} packets/s (start-up cost excluded)"
            )
            ratios["douane_marginal_packets_per_second"] = round(marginal)
            if softflowd_run is not None:
                print(f"softflowd / douane at that rate = {softflowd_run.packets_per_second / marginal:.1f}x")
    sys.stdout.flush()
    for problem in problems:
        print(f"\n! {problem}", file=sys.stderr)

    if args.json_out:
        report = {
            "capture": asdict(info),
            "environment": environment(douane, softflowd),
            "runs": [{**asdict(r), "packets_per_second": round(r.packets_per_second)} for r in runs],
            "ratios": ratios,
            "targets": {
                "douane_over_scapy_min": TARGET_VS_SCAPY,
                "softflowd_over_douane_max": TARGET_VS_SOFTFLOWD,
            },
            "memory_scaling": scaling,
            "rss_floor_kib": floor,
            "problems": problems,
        }
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    # Missing douane is an error (the benchmark measured nothing of ours); a missed target is not.
    return 2 if douane_run is None else 0


def _scaling_row(run: Run) -> dict[str, Any]:
    return {
        "wall_seconds": round(run.wall_seconds, 3),
        "packets_per_second": round(run.packets_per_second),
        "max_rss_kib": run.max_rss_kib,
        "note": run.note,
    }


if __name__ == "__main__":
    sys.exit(main())
