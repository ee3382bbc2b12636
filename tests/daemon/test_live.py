"""`douane run` capturing live, in network namespaces the test makes itself.

douane runs in namespace A on one end of a veth pair; scapy sends from namespace B on the other end.
Nothing touches the host's own interfaces: both ends live in the test's namespaces, which are deleted
afterwards. Needs root and iproute2 (CI runs as root); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from douane.daemon.demo_capture import START, client_hello, tcp_session

PORT = 19742
AZURE = "20.199.120.7"
HL7 = (b"\x0bMSH|^~\\&|LAB|HOSP|EXT|PARTNER|202611281000||ADT^A01|42|P|2.5\rPID|1||12345||X^Y\r\x1c\x0d")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces joined by a veth pair: douane's end `dva` in A, the sender's `dvb` in B."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("live capture needs root and iproute2 (ip netns)")
    tag = uuid.uuid4().hex[:6]
    a, b = f"douane-a-{tag}", f"douane-b-{tag}"
    ip("netns", "add", a)
    ip("netns", "add", b)
    try:
        ip("link", "add", f"dva{tag}", "type", "veth", "peer", "name", f"dvb{tag}")
        ip("link", "set", f"dva{tag}", "netns", a)
        ip("link", "set", f"dvb{tag}", "netns", b)
        ip("-n", a, "link", "set", f"dva{tag}", "name", "dva")
        ip("-n", b, "link", "set", f"dvb{tag}", "name", "dvb")
        for ns, dev in ((a, "dva"), (b, "dvb")):
            # No IPv6 on the veth ends: the kernel would send its own frames on them (duplicate
            # address detection, MLD reports, router solicitations), which the packet counts below
            # would see. Frames the tests send (IPv6 ones too) still cross, as raw frames.
            sysctl = ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"]
            subprocess.run(["ip", "netns", "exec", ns, *sysctl], check=True, timeout=30)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        ip("netns", "del", a, check=False)
        ip("netns", "del", b, check=False)


class NotifySocket:
    """A systemd notification socket for the daemon under test (watchdog every second): what it
    sent, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)
        self.env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        self.messages: list[str] = []

    def until(self, text: str) -> None:
        """Receive until a message holding `text` has come (30 s at most per message)."""
        while not any(text in m for m in self.messages):
            self.messages.append(self.sock.recv(4096).decode())

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()


class Daemon:
    """`douane run` inside namespace A, its stdout (JSON records) and stderr (JSON logs) in files."""

    def __init__(self, ns: str, tmp: Path, config_text: str, env: dict[str, str] | None = None,
                 ready_event: str = "capture_started") -> None:
        self.ns, self.tmp = ns, tmp
        self.config = tmp / "douane.yaml"
        self.config.write_text(config_text)
        self.out = (tmp / "records.jsonl").open("w")
        self.err_path = tmp / "daemon.log"
        self.err = self.err_path.open("w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "douane.daemon.cli", "run",
             "-c", str(self.config), "--json"],
            stdout=self.out, stderr=self.err, env={**os.environ, **(env or {})},
        )
        self.wait_log(ready_event)

    def logs(self) -> list[dict[str, Any]]:
        lines = self.err_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_log(self, event: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for entry in self.logs() if entry.get("event") == event) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"douane run exited {self.proc.returncode}: {self.err_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event!r} log: {self.err_path.read_text()}")
            time.sleep(0.1)

    def metrics(self) -> str:
        code = (f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics')"
                ".read().decode())")
        return subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", code],
                              capture_output=True, text=True, check=True, timeout=30).stdout

    def stop(self) -> list[dict[str, Any]]:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.err_path.read_text()
        self.out.close()
        self.err.close()
        return [json.loads(line) for line in (self.tmp / "records.jsonl").read_text().splitlines()]


def send(ns: str, tmp: Path, packets: list[Any]) -> None:
    """Send frames from namespace B with scapy (a real socket send, not a file replay)."""
    pcap = tmp / "send.pcap"
    wrpcap(str(pcap), packets)
    code = (f"from scapy.all import rdpcap, sendp; sendp(rdpcap({str(pcap)!r}), iface='dvb', "
            "verbose=False, inter=0.002)")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True, timeout=60)


CONFIG = f"""
capture:
  interface: dva
  bpf: "not port 22"
networks:
  internal: [10.0.0.0/8]
zones:
  - name: lab
    networks: [10.20.0.0/24]
    categories: [health]
exporter:
  listen: 127.0.0.1:{PORT}
logging:
  format: json
"""


def traffic() -> list[Any]:
    reply = DNS(id=1, qr=1, qd=DNSQR(qname="hdh.blob.core.windows.net"),
                an=DNSRR(rrname="hdh.blob.core.windows.net", type="A", ttl=300, rdata=AZURE))
    dns = [Ether() / IP(src="10.30.0.21", dst="10.0.0.53") / UDP(sport=40000, dport=53)
           / DNS(id=1, rd=1, qd=DNSQR(qname="hdh.blob.core.windows.net")),
           Ether() / IP(src="10.0.0.53", dst="10.30.0.21") / UDP(sport=53, dport=40000) / reply]
    tls = tcp_session("10.30.0.21", AZURE, 51000, 443, START, client_hello("hdh.blob.core.windows.net"),
                      3_000, 1_000)
    hl7 = tcp_session("10.20.0.30", AZURE, 51001, 2575, START, HL7, 0, 100)
    return [*dns, *tls, *hl7]


class TestRun:
    def test_flows_metrics_and_sigterm(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """Live traffic gives exactly its flows, names and categories; SIGTERM flushes open flows."""
        a, b = namespaces
        daemon = Daemon(a, tmp_path, CONFIG)
        packets = traffic()
        # A flow left open (no FIN): only SIGTERM's flush can declare it.
        open_flow = tcp_session("10.30.0.22", AZURE, 51002, 8443, START, b"x" * 10, 0, 0)[:4]
        send(b, tmp_path, packets + open_flow)
        time.sleep(2.5)  # flows close after their FIN grace, on the daemon's idle ticks
        metrics = daemon.metrics()
        records = daemon.stop()
        by_port = {r["dport"]: r for r in records if r["proto"] in ("tcp", "udp")}
        assert set(by_port) == {53, 443, 2575, 8443}
        tls = by_port[443]
        assert (tls["hostname"], tls["hostname_source"]) == ("hdh.blob.core.windows.net", "tls_sni")
        assert tls["packets_out"] + tls["packets_in"] == sum(
            1 for p in packets if p.haslayer("TCP") and 443 in (p["TCP"].sport, p["TCP"].dport))
        assert "protocol:hl7v2" in by_port[2575]["data_categories"]["health"]
        assert by_port[2575]["verdict"] == "critical"
        assert by_port[8443]["packets_out"] == 3  # SYN, ACK, data: declared at SIGTERM
        # Scraped while running: counts are live, not only at the end. (A stray frame of the kernel's
        # may still add one or two.)
        sent = len(packets) + len(open_flow)
        live = float(re.search(r'douane_packets_total\{source="live"\} (\S+)', metrics).group(1))  # type: ignore[union-attr]
        assert sent <= live <= sent + 10, metrics
        assert 'douane_packets_dropped_total{reason="kernel"}' in metrics

    def test_two_workers_count_every_flow_once(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """With workers: 2, the kernel shares flows between two processes by flow hash: every flow is
        declared once, with all its packets, and the one exporter adds up both workers."""
        a, b = namespaces
        daemon = Daemon(a, tmp_path, CONFIG.replace("  interface: dva\n", "  interface: dva\n  workers: 2\n"),
                        ready_event="workers_started")
        flows = []
        for i in range(40):
            hello = client_hello("a.example.org")
            flows += tcp_session("10.30.0.21", AZURE, 52000 + i, 443, START + i, hello, 2_000, 1_000)
        send(b, tmp_path, flows)
        time.sleep(3)
        metrics = daemon.metrics()
        records = daemon.stop()
        mine = [r for r in records if r.get("dst") == AZURE and r.get("dport") == 443]
        assert sorted(r["sport"] for r in mine) == list(range(52000, 52040))  # each flow once
        assert sum(r["packets_out"] + r["packets_in"] for r in mine) == len(flows)
        live = float(re.search(r'douane_packets_total\{source="live"\} (\S+)', metrics).group(1))  # type: ignore[union-attr]
        assert len(flows) <= live <= len(flows) + 10
        starts = [e for e in daemon.logs() if e.get("event") == "capture_started"]
        assert len(starts) == 2  # both workers captured

    def test_vlan_tag_kept(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """A VLAN-tagged frame keeps its tag in the record, even where the kernel strips it."""
        a, b = namespaces
        daemon = Daemon(a, tmp_path, CONFIG)
        frame = (Ether() / Dot1Q(vlan=30) / IP(src="10.30.0.21", dst=AZURE)
                 / UDP(sport=40001, dport=5000) / Raw(b"x" * 20))
        send(b, tmp_path, [frame])
        time.sleep(1)
        records = daemon.stop()
        flow = next(r for r in records if r.get("dport") == 5000)
        assert flow["vlan"] == 30

    def test_plain_sockets(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """Without the ring (one recv per frame), every frame the filter passes is read, only those."""
        a, b = namespaces
        code = (
            "import sys, threading, time\n"
            "from douane.daemon.live import LiveCapture, LiveConfig\n"
            "cap = LiveCapture(LiveConfig(('dva',), bpf='udp port 5001', ring=False)); cap.start()\n"
            "stop = threading.Event(); threading.Timer(6, stop.set).start()\n"
            "from douane.daemon.dissect import dissect\n"
            "seen = [dissect(lt, buf, s, e, w, {}) for buf, recs in cap.batches(stop, lambda now: None)"
            " for _, lt, s, e, w in recs]\n"
            "print(sum(1 for p in seen if p and p[5] == 5001), len(seen))\n"
        )
        reader = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", code],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        frames = [Ether() / IP(src="10.30.0.21", dst=AZURE) / UDP(sport=40002, dport=5001) / Raw(b"y" * i)
                  for i in range(1, 51)]
        send(b, tmp_path, frames)
        out, _ = reader.communicate(timeout=60)
        matching, total = map(int, out.split())
        assert (matching, total) == (50, 50), out

    def test_sighup_reload(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """SIGHUP with a valid file reloads; with an invalid one it is refused and counted, and the
        daemon keeps running with the old configuration."""
        a, _b = namespaces
        daemon = Daemon(a, tmp_path, CONFIG)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("config_reloaded")
        daemon.config.write_text(CONFIG.replace("categories: [health]", "categories: [wealth]"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("config_reload_refused")
        metrics = daemon.metrics()
        assert 'douane_config_reload_total{result="success"} 1.0' in metrics
        assert 'douane_config_reload_total{result="failure"} 1.0' in metrics
        refused = next(e for e in daemon.logs() if e["event"] == "config_reload_refused")
        assert "zones[0].categories[0]" in refused["error"]
        assert daemon.proc.poll() is None
        daemon.stop()

    def test_systemd_notifications(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """Under systemd: READY=1 once capturing, WATCHDOG=1 within the watchdog period, STOPPING=1."""
        a, _b = namespaces
        with NotifySocket(tmp_path / "notify.sock") as systemd:
            daemon = Daemon(a, tmp_path, CONFIG, env=systemd.env)
            systemd.until("WATCHDOG=1")
            daemon.stop()
            systemd.until("STOPPING=1")
        messages = systemd.messages
        assert messages[0].startswith("READY=1") and "STATUS=capturing on dva" in messages[0]

    def test_missing_interface(self, tmp_path: Path) -> None:
        """A configured interface that does not exist: a clear message and exit 2."""
        if os.geteuid() != 0:
            pytest.skip("needs root")
        config = tmp_path / "douane.yaml"
        config.write_text(CONFIG.replace("interface: dva", "interface: nosuchif0"))
        result = subprocess.run([sys.executable, "-m", "douane.daemon.cli", "run", "-c", str(config)],
                                capture_output=True, text=True, check=False, timeout=60)
        assert result.returncode == 2
        assert "nosuchif0" in result.stderr and "Traceback" not in result.stderr


# --- `douane run` with the flow collector: beside capture, named from its DNS answers, or alone ------

SOFTFLOWD = shutil.which("softflowd") or (
    "/usr/sbin/softflowd" if Path("/usr/sbin/softflowd").exists() else None)
COLLECTOR_PORT = 12055
NAME = "hdh.blob.core.windows.net"
UNNAMED = "198.51.100.7"
# The gateway recipe (docs/collector.md): capture DNS only, take flow records from the firewall.
DNS_AND_RECORDS = CONFIG.replace('  bpf: "not port 22"\n', f"""  bpf: "port 53"
  collector:
    listen: 127.0.0.1:{COLLECTOR_PORT}
    exporters: [127.0.0.1]
""")
RECORDS_ONLY = DNS_AND_RECORDS.replace("  interface: dva\n", "").replace('  bpf: "port 53"\n', "")


def dns_answer(client: str = "10.30.0.21", ident: int = 7) -> list[Any]:
    """A client asks the resolver for NAME and is told AZURE."""
    question = DNSQR(qname=NAME)
    return [Ether() / IP(src=client, dst="10.0.0.53") / UDP(sport=40000 + ident, dport=53)
            / DNS(id=ident, rd=1, qd=question),
            Ether() / IP(src="10.0.0.53", dst=client) / UDP(sport=53, dport=40000 + ident)
            / DNS(id=ident, qr=1, qd=question, an=DNSRR(rrname=NAME, type="A", ttl=300, rdata=AZURE))]


def connections(*ends: tuple[str, int]) -> list[Any]:
    """One TCP connection from 10.30.0.21 to each (address, client port), without any name in it
    (a plain payload, no ClientHello): only a DNS answer can name it."""
    packets = []
    for dst, sport in ends:
        packets += tcp_session("10.30.0.21", dst, sport, 443, START, b"p" * 200, 3_000, 1_000)
    return packets


def export(ns: str, tmp: Path, packets: list[Any], tag: str) -> None:
    """softflowd in namespace `ns` reads `packets` (stamped the last two seconds: its 32-bit uptimes
    cannot place older ones) and exports their flows as IPFIX to the collector, then exits."""
    assert SOFTFLOWD is not None
    now = time.time()
    for index, packet in enumerate(packets):
        packet.time = now - 2 + index * 0.001
    pcap = tmp / f"{tag}.pcap"
    wrpcap(str(pcap), packets)
    # -d: foreground; -c none: no control socket.
    subprocess.run(["ip", "netns", "exec", ns, SOFTFLOWD, "-r", str(pcap), "-n",
                    f"127.0.0.1:{COLLECTOR_PORT}", "-v", "10", "-d", "-c", "none",
                    "-p", str(tmp / f"{tag}.pid")], check=True, capture_output=True, timeout=30)


def value(metrics: str, name: str, **labels: str) -> float:
    """A sample's value in an exposition (0 when absent)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def wait_metric(daemon: Daemon, name: str, minimum: float, **labels: str) -> str:
    """Scrapes until `name` reaches `minimum`; returns the last exposition."""
    deadline = time.monotonic() + 30
    while True:
        metrics = daemon.metrics()
        if value(metrics, name, **labels) >= minimum:
            return metrics
        assert time.monotonic() < deadline, f"{name} below {minimum}: {metrics}"
        assert daemon.proc.poll() is None, daemon.err_path.read_text()
        time.sleep(0.2)


def records_to(records: list[dict[str, Any]], dst: str, sport: int) -> list[dict[str, Any]]:
    return [r for r in records if r["dst"] == dst and r["sport"] == sport]


@pytest.mark.skipif(SOFTFLOWD is None, reason="softflowd not installed (.ci/run installs it)")
class TestRunWithCollector:
    def test_collected_flows_named_from_captured_dns(self, namespaces: tuple[str, str],
                                                     tmp_path: Path) -> None:
        """Capturing only DNS while softflowd exports IPFIX records: a collected flow to the address
        a captured answer named carries that name (`dns`) and its service and provider, is counted
        by the one exporter, and SIGTERM declares both the open captured flow and the records the
        kernel still held."""
        a, b = namespaces
        daemon = Daemon(a, tmp_path, DNS_AND_RECORDS)
        daemon.wait_log("collector_started")
        send(b, tmp_path, dns_answer())
        wait_metric(daemon, "douane_dns_cache_entries", 2)  # the client's entry and the global one
        export(a, tmp_path, connections((AZURE, 51000), (UNNAMED, 51001)), "first")
        metrics = wait_metric(daemon, "douane_collector_records_total", 4, exporter="127.0.0.1")
        # Records that arrive while the daemon is stopped, then SIGTERM: drained, not lost.
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            export(a, tmp_path, connections((AZURE, 51002)), "last")
            daemon.proc.send_signal(signal.SIGTERM)
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        records = daemon.stop()
        for sport in (51000, 51002):
            named = records_to(records, AZURE, sport)
            assert len(named) == 2, records  # one record per direction
            assert {(r["hostname"], r["hostname_source"], r["service"], r["provider"])
                    for r in named} == {(NAME, "dns", "azure-storage", "microsoft")}
        unnamed = records_to(records, UNNAMED, 51001)
        assert len(unnamed) == 2 and {r["hostname"] for r in unnamed} == {None}
        # The captured DNS exchange was still open (idle timeout 60 s): SIGTERM declared it.
        [dns] = [r for r in records if r["dport"] == 53]
        assert (dns["src"], dns["packets_out"], dns["packets_in"]) == ("10.30.0.21", 1, 1)
        # One exporter for both sources: the collected flow in the egress counters, captured
        # packets beside the collector's records.
        out = next(r for r in records_to(records, AZURE, 51000) if r["bytes_out"])
        assert value(metrics, "douane_egress_bytes_total", provider="microsoft") == out["bytes_out"]
        assert value(metrics, "douane_packets_total", source="live") == 2
        assert value(metrics, "douane_collector_refused_datagrams_total") == 0
        logs = daemon.logs()
        assert [e["records"] for e in logs if e.get("event") == "collector_stopped"] == [6]
        assert any(e.get("event") == "capture_stopped" for e in logs)

    def test_sighup(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """A bad file on SIGHUP is refused and both sources go on; a good one applies, the
        collector's exporters list included."""
        a, b = namespaces
        daemon = Daemon(a, tmp_path, DNS_AND_RECORDS)
        daemon.wait_log("collector_started")
        daemon.config.write_text(DNS_AND_RECORDS.replace("categories: [health]", "categories: [wealth]"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("config_reload_refused")
        send(b, tmp_path, dns_answer())
        wait_metric(daemon, "douane_dns_cache_entries", 2)
        export(a, tmp_path, connections((AZURE, 51000)), "after-refused")
        wait_metric(daemon, "douane_collector_records_total", 2, exporter="127.0.0.1")
        # 127.0.0.1 no longer listed: its datagrams are refused from now on.
        daemon.config.write_text(DNS_AND_RECORDS.replace("exporters: [127.0.0.1]", "exporters: [192.0.2.1]"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("config_reloaded")
        export(a, tmp_path, connections((AZURE, 51001)), "after-reload")
        metrics = wait_metric(daemon, "douane_collector_refused_datagrams_total", 1)
        records = daemon.stop()
        assert value(metrics, "douane_config_reload_total", result="failure") == 1
        assert value(metrics, "douane_config_reload_total", result="success") == 1
        assert value(metrics, "douane_collector_records_total", exporter="192.0.2.1") == 0
        assert {r["hostname"] for r in records_to(records, AZURE, 51000)} == {NAME}
        assert records_to(records, AZURE, 51001) == []

    def test_collector_alone(self, namespaces: tuple[str, str], tmp_path: Path) -> None:
        """`douane run` with a collector and no interface: READY once it listens, its records
        declared (unnamed: no DNS source), the watchdog fed, exit 0 on SIGTERM."""
        a, _b = namespaces
        with NotifySocket(tmp_path / "notify.sock") as systemd:
            daemon = Daemon(a, tmp_path, RECORDS_ONLY, env=systemd.env, ready_event="collector_started")
            systemd.until("READY=1")
            export(a, tmp_path, connections((AZURE, 51000)), "alone")
            metrics = wait_metric(daemon, "douane_collector_records_total", 2, exporter="127.0.0.1")
            systemd.until("WATCHDOG=1")
            records = daemon.stop()
        messages = systemd.messages
        assert messages[0] == f"READY=1\nSTATUS=collecting on 127.0.0.1:{COLLECTOR_PORT}"
        assert {(r["hostname"], r["provider"]) for r in records} == {(None, "microsoft")}
        assert len(records) == 2
        assert value(metrics, "douane_packets_total", source="collector") == 0
        assert not any(e.get("event") == "capture_started" for e in daemon.logs())
