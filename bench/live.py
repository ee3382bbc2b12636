"""Live capture at increasing offered rates: the highest rate douane takes with no kernel drop.

Two network namespaces made here, joined by a veth pair: `douane run` (or scapy's `sniff()`, the
baseline) listens on one end, tcpreplay sends the mixed benchmark capture from the other at a fixed
packet rate. Nothing leaves the namespaces. For each rate the script reads what the capturer saw and
what the kernel dropped. It prints figures and never asserts them (run as root; needs iproute2 and
Debian's tcpreplay).

    python bench/live.py --rates 20000,50000,100000,200000 --packets 100000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mixed_capture import cached_capture

PORT = 19743


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def namespaces() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"dbench-a-{tag}", f"dbench-b-{tag}"
    ip("netns", "add", a)
    ip("netns", "add", b)
    try:
        ip("link", "add", f"la{tag}", "type", "veth", "peer", "name", f"lb{tag}")
        ip("link", "set", f"la{tag}", "netns", a)
        ip("link", "set", f"lb{tag}", "netns", b)
        ip("-n", a, "link", "set", f"la{tag}", "name", "dva")
        ip("-n", b, "link", "set", f"lb{tag}", "name", "dvb")
        for ns, dev in ((a, "dva"), (b, "dvb")):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], check=False)
        subprocess.run(["ip", "netns", "del", b], check=False)


def send(ns: str, pcap: Path, rate: int) -> float:
    """tcpreplay at `rate` packets/s from namespace B; returns the achieved rate."""
    out = subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-i", "dvb", f"--pps={rate}", str(pcap)],
                         capture_output=True, text=True, check=True).stdout
    found = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
    return float(found.group(1)) if found else float("nan")


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, flags=re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def douane_at(a: str, b: str, pcap: Path, packets: int, rate: int, tmp: Path,
              workers: int = 1) -> dict[str, float]:
    config = tmp / "douane.yaml"
    config.write_text(f"capture:\n  interface: dva\n  workers: {workers}\n"
                      f"exporter:\n  listen: 127.0.0.1:{PORT}\nlogging:\n  level: warning\n  format: json\n")
    proc = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-m", "douane.daemon.cli", "run",
                             "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        scrape = (f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics')"
                  ".read().decode())")
        for _ in range(100):
            probe = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", scrape],
                                   capture_output=True, text=True, check=False)
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        achieved = send(b, pcap, rate)
        time.sleep(2)
        text = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", scrape],
                              capture_output=True, text=True, check=True).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    seen = metric(text, 'douane_packets_total{source="live"}')
    dropped = metric(text, 'douane_packets_dropped_total{reason="kernel"}')
    return {"offered_pps": rate, "achieved_pps": achieved, "sent": packets, "seen": seen,
            "kernel_drops": dropped}


def scapy_at(a: str, b: str, pcap: Path, packets: int, rate: int, tmp: Path) -> dict[str, float]:
    result = tmp / "scapy.txt"
    code = ("import sys, threading\nfrom scapy.all import sniff\nn = [0]\n"
            "def count(_): n[0] += 1\n"
            f"sniff(iface='dva', store=False, prn=count, timeout={max(10, packets / rate + 8):.0f}, "
            "started_callback=lambda: open(sys.argv[2], 'w').write('ready'))\n"
            "open(sys.argv[1], 'w').write(str(n[0]))\n")
    ready = tmp / "ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", code, str(result), str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if ready.exists():
            break
        time.sleep(0.1)
    achieved = send(b, pcap, rate)
    proc.wait(timeout=600)
    seen = float(result.read_text()) if result.exists() else float("nan")
    return {"offered_pps": rate, "achieved_pps": achieved, "sent": packets, "seen": seen,
            "kernel_drops": packets - seen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="20000,50000,100000,200000",
                        help="offered packet rates, comma-separated (default: %(default)s)")
    parser.add_argument("--packets", type=int, default=100_000, help="packets sent at each rate")
    parser.add_argument("--no-scapy", action="store_true", help="skip the scapy sniff() baseline")
    parser.add_argument("--workers", default="1,2",
                        help="douane worker counts to measure (default: %(default)s)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tcpreplay") is None:
        print("bench/live.py needs root, iproute2 and tcpreplay (Debian package tcpreplay)", file=sys.stderr)
        return 2
    pcap, _info = cached_capture(args.packets)
    rates = [int(r) for r in args.rates.split(",")]
    counts = [int(w) for w in args.workers.split(",")]
    results: dict[str, list[dict[str, float]]] = {f"douane x{w}": [] for w in counts}
    results["scapy"] = []
    with namespaces() as (a, b), tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for rate in rates:
            for workers in counts:
                results[f"douane x{workers}"].append(
                    douane_at(a, b, pcap, args.packets, rate, tmp, workers))
            if not args.no_scapy:
                results["scapy"].append(scapy_at(a, b, pcap, args.packets, rate, tmp))
    print(f"live capture on a veth pair, {args.packets:,} packets of the mixed capture per rate\n")
    print(f"{'capturer':10s} {'offered/s':>10s} {'achieved/s':>11s} {'seen':>9s} {'lost':>8s}")
    for name, rows in results.items():
        for row in rows:
            lost = row["kernel_drops"]
            print(f"{name:10s} {row['offered_pps']:>10,.0f} {row['achieved_pps']:>11,.0f} "
                  f"{row['seen']:>9,.0f} {lost:>8,.0f}")
    for name, rows in results.items():
        clean = [r["achieved_pps"] for r in rows if r["kernel_drops"] == 0]
        best = max(clean) if clean else 0
        print(f"highest rate with no loss, {name}: {best:,.0f} packets/s")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
