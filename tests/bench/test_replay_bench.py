"""Smoke test of the replay benchmark's capture generator and measuring helpers.

Nothing here is timed: the benchmark reports figures, it never asserts them. These tests check that
the capture it measures on is what it claims to be (a valid pcap with VLAN, IPv6, TLS ClientHellos
with SNI, DNS answers and QUIC Initials, correct checksums, reproducible), and that the child
process measurement reports the child's memory, not the benchmark's own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from scapy.layers.dns import DNS
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet
from scapy.utils import PcapReader, rdpcap

BENCH = Path(__file__).resolve().parents[2] / "bench"
PACKETS = 2_000


def _load(name: str) -> ModuleType:
    """Import a bench/ script as a module: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # replay.py imports mixed_capture by this name
    spec.loader.exec_module(module)
    return module


mixed_capture = _load("mixed_capture")
replay = _load("replay")


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "mixed.pcap"
    mixed_capture.write_capture(path, PACKETS, seed=7)
    return path


@pytest.fixture(scope="module")
def packets(capture: Path) -> list[Packet]:
    return list(rdpcap(str(capture)))


def sni_of(payload: bytes) -> str | None:
    """The server_name of a TLS ClientHello record, None when the payload is not one.

    A strict walk of RFC 8446 §4.1.2 and RFC 6066 §3 that checks every length, so that a generator
    writing a wrong length fails here instead of producing a hello no dissector would accept.
    """
    if len(payload) < 9 or payload[0] != 0x16 or payload[5] != 0x01:  # handshake, client_hello
        return None
    (record_len,) = struct.unpack_from("!H", payload, 3)
    assert record_len == len(payload) - 5
    assert int.from_bytes(payload[6:9], "big") == record_len - 4
    pos = 9 + 2 + 32  # legacy_version, random
    pos += 1 + payload[pos]  # legacy_session_id
    (ciphers_len,) = struct.unpack_from("!H", payload, pos)
    pos += 2 + ciphers_len
    pos += 1 + payload[pos]  # legacy_compression_methods
    (extensions_len,) = struct.unpack_from("!H", payload, pos)
    pos += 2
    assert pos + extensions_len == len(payload)
    while pos < len(payload):
        kind, length = struct.unpack_from("!HH", payload, pos)
        pos += 4
        if kind == 0:  # server_name
            list_len, name_type, name_len = struct.unpack_from("!HBH", payload, pos)
            assert (list_len, name_type) == (length - 2, 0)
            return payload[pos + 5 : pos + 5 + name_len].decode("ascii")
        pos += length
    return None


class TestWriteCapture:
    def test_scapy_reads_every_packet_as_ethernet(self, capture: Path, packets: list[Packet]) -> None:
        """The file is a classic pcap with the Ethernet link type and exactly the asked count."""
        with PcapReader(str(capture)) as reader:
            assert reader.linktype == 1
        assert len(packets) == PACKETS
        assert all(isinstance(p, Ether) for p in packets)

    def test_timestamps_never_go_back(self, packets: list[Packet]) -> None:
        """Packets are written in time order, as a capture of one link is."""
        times = [p.time for p in packets]
        assert times == sorted(times)

    def test_the_mix_holds_every_kind_of_packet(self, packets: list[Packet]) -> None:
        """VLAN and QinQ frames, IPv4 and IPv6, DNS questions and answers, TCP and QUIC are there."""
        kinds: Counter[str] = Counter()
        for p in packets:
            kinds["vlan"] += p.haslayer(Dot1Q)
            kinds["qinq"] += p.haslayer(Dot1AD)
            kinds["ipv4"] += p.haslayer(IP)
            kinds["ipv6"] += p.haslayer(IPv6)
            kinds["tcp"] += p.haslayer(TCP)
            if p.haslayer(DNS):
                dns = p[DNS]
                if not dns.qr:
                    kinds["dns_query"] += 1
                elif any(rr.type in (1, 28) for rr in dns.an):  # A, AAAA
                    kinds["dns_answer_a_aaaa"] += 1
            if p.haslayer(UDP) and p[UDP].dport == 443:
                payload = bytes(p[UDP].payload)
                # RFC 9000 §17.2.2: long header, version 1, type Initial; padded to 1200 bytes.
                if payload[0] & 0xF0 == 0xC0 and payload[1:5] == b"\0\0\0\1":
                    kinds["quic_initial"] += len(payload) == 1200
        for kind in (
            "vlan", "qinq", "ipv4", "ipv6", "tcp", "dns_query", "dns_answer_a_aaaa", "quic_initial"
        ):  # fmt: skip
            assert kinds[kind] > 0, kind
        assert kinds["ipv6"] < kinds["ipv4"]

    def test_client_hellos_carry_a_catalogue_hostname(self, packets: list[Packet]) -> None:
        """Every ClientHello to port 443 parses strictly and names a hostname of the catalogue."""
        catalogue = {h for p in mixed_capture.PROVIDERS for h in p.hostnames}
        names = [
            sni_of(bytes(p[TCP].payload))
            for p in packets
            if p.haslayer(TCP) and p[TCP].dport == 443 and len(p[TCP].payload) > 0
        ]
        hellos = [n for n in names if n is not None]
        assert hellos
        assert set(hellos) <= catalogue

    def test_checksums_are_valid(self, packets: list[Packet]) -> None:
        """IPv4, TCP and UDP checksums match what scapy computes for the stamped bytes."""
        for p in packets[:600]:
            rebuilt = p.copy()
            for layer in (IP, TCP, UDP):
                if rebuilt.haslayer(layer):
                    del rebuilt[layer].chksum
            rebuilt = Ether(bytes(rebuilt))
            for layer in (IP, TCP, UDP):
                if p.haslayer(layer):
                    assert rebuilt[layer].chksum == p[layer].chksum, (layer.__name__, p.summary())

    def test_same_seed_same_bytes(self, capture: Path, tmp_path: Path) -> None:
        """A seed gives the same file byte for byte; another seed gives another file."""
        again, other = tmp_path / "again.pcap", tmp_path / "other.pcap"
        mixed_capture.write_capture(again, PACKETS, seed=7)
        mixed_capture.write_capture(other, PACKETS, seed=8)
        digest = hashlib.sha256(capture.read_bytes()).hexdigest()
        assert hashlib.sha256(again.read_bytes()).hexdigest() == digest
        assert hashlib.sha256(other.read_bytes()).hexdigest() != digest


class TestRunChild:
    def test_reports_the_child_memory_not_the_benchmark_one(self) -> None:
        """A child's max RSS reflects what it allocates, not the size of the process measuring it."""
        small = replay.run_child([sys.executable, "-S", "-c", "pass"])
        big = replay.run_child([sys.executable, "-S", "-c", "b = bytearray(200 << 20)"])
        assert small.returncode == big.returncode == 0
        # This test process holds scapy (well over 40 MiB); a small child must not report it.
        assert small.max_rss_kib < 40 * 1024
        assert big.max_rss_kib > 200 * 1024

    def test_kills_a_child_past_its_timeout(self) -> None:
        """A hung child is killed and reported with return code -9 instead of hanging the run."""
        child = replay.run_child([sys.executable, "-S", "-c", "import time; time.sleep(60)"],
                                 timeout=0.5)  # fmt: skip
        assert child.returncode == -9


class TestMetricSum:
    def test_sums_every_labelled_sample(self) -> None:
        """All samples of a metric are added up, whatever their labels; other metrics are ignored."""
        text = (
            "# HELP douane_packets_total Packets read.\n"
            'douane_packets_total{source="pcap"} 1.5e+06\n'
            'douane_packets_total{source="live"} 10.0\n'
            "douane_packets_total_created 1.7e+09\n"
        )
        assert replay.metric_sum(text, "douane_packets_total") == 1_500_010
        assert replay.metric_sum(text, "douane_flows_created_total") is None
