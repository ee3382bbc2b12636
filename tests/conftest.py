"""Shared fixtures: Hypothesis profiles, scapy packet builders, capture writers and a flow runner.

Captures are written to `tmp_path` by scapy (`wrpcap`, `PcapNgWriter`) or, where scapy cannot (a
big-endian pcap, hand-made records), by `pcap_bytes` below with `struct`, so every byte of the file is
chosen by the test.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, wrpcap

from douane.daemon.flows import Flow, FlowConfig, FlowTable
from douane.daemon.pcapfile import open_capture
from douane.daemon.pipeline import Record, flow_record

# --- tests/daemon/data/corpus_payloads.py as the module `corpus_payloads` --------------------------
# Test modules collect parameters from it at import time, before fixtures exist, and tests/ has no
# package files: loading it once here lets them `import corpus_payloads`.
_spec = importlib.util.spec_from_file_location(
    "corpus_payloads", Path(__file__).resolve().parent / "daemon" / "data" / "corpus_payloads.py"
)
assert _spec is not None and _spec.loader is not None
corpus_payloads = importlib.util.module_from_spec(_spec)
sys.modules["corpus_payloads"] = corpus_payloads
_spec.loader.exec_module(corpus_payloads)

# --- Hypothesis: fast by default, deep with HYPOTHESIS_PROFILE=deep ----------------------------------
settings.register_profile(
    "fast", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# --- addresses used throughout: documentation ranges outside, RFC 1918 / RFC 4193 inside ------------
CLIENT = "10.0.0.5"  # internal (RFC 1918)
CLIENT2 = "192.168.1.20"  # internal (RFC 1918)
SERVER = "198.51.100.7"  # external (TEST-NET-2)
SERVER2 = "203.0.113.9"  # external (TEST-NET-3)
CLIENT6 = "fd00::5"  # internal (RFC 4193)
SERVER6 = "2001:db8::7"  # external: 2001:db8::/32 is not in the default internal networks

T0 = 1_764_324_000.0  # 2025-11-28T10:00:00Z, a whole second so timestamps are exact in binary

# pcap link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276


def stamp(packets: Iterable[Packet], start: float = T0, step: float = 0.1) -> list[Packet]:
    """Give each packet a capture time: `start`, then every `step` seconds."""
    out = []
    for i, pkt in enumerate(packets):
        pkt.time = start + i * step
        out.append(pkt)
    return out


def eth(ip: Packet) -> Packet:
    """Wrap an IP packet in an Ethernet II header (14 bytes)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip


def ip_len(pkt: Packet) -> int:
    """IP-layer length of a built packet: the IP header and everything it carries, no padding."""
    layer = pkt[IP] if IP in pkt else pkt[IPv6]
    return len(layer)


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes = b"",
        **ip_fields: Any) -> Packet:
    """One Ethernet + IPv4/IPv6 + TCP packet (IPv6 when `src` contains a colon)."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, **ip_fields)
    pkt = ip / TCP(sport=sport, dport=dport, flags=flags)
    return eth(pkt / Raw(payload) if payload else pkt)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x" * 10) -> Packet:
    """One Ethernet + IPv4/IPv6 + UDP packet."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return eth(ip / UDP(sport=sport, dport=dport) / Raw(payload))


def icmp_echo(src: str, dst: str, reply: bool = False, payload: bytes = b"p" * 32) -> Packet:
    """One Ethernet + IPv4 + ICMP echo request (or reply)."""
    return eth(IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=7, seq=1) / Raw(payload))


def tcp_session(client: str, server: str, cport: int, sport: int, data: Sequence[bytes] = (b"GET",),
                reply: bytes = b"OK") -> list[Packet]:
    """A complete TCP session: handshake, client data, server reply, FIN both ways, last ACK."""
    pkts = [
        tcp(client, server, cport, sport, "S"),
        tcp(server, client, sport, cport, "SA"),
        tcp(client, server, cport, sport, "A"),
    ]
    pkts += [tcp(client, server, cport, sport, "PA", chunk) for chunk in data]
    pkts += [
        tcp(server, client, sport, cport, "PA", reply),
        tcp(client, server, cport, sport, "FA"),
        tcp(server, client, sport, cport, "FA"),
        tcp(client, server, cport, sport, "A"),
    ]
    return pkts


# --- capture writers -------------------------------------------------------------------------------


def pcap_bytes(records: Iterable[tuple[float, bytes] | tuple[float, bytes, int]], linktype: int,
               order: str = "<", nano: bool = False) -> bytes:
    """A classic pcap file written with struct: byte `order` "<" or ">", micro- or nanoseconds.

    Each record is (time, frame) or (time, frame, original length on the wire).
    """
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262_144, linktype)]
    scale = 1_000_000_000 if nano else 1_000_000
    for rec in records:
        ts, frame = rec[0], rec[1]
        wirelen = rec[2] if len(rec) > 2 else len(frame)  # type: ignore[misc]
        sec = int(ts)
        frac = round((ts - sec) * scale)
        out.append(struct.pack(order + "IIII", sec, frac, len(frame), wirelen) + frame)
    return b"".join(out)


@pytest.fixture
def write_pcap(tmp_path: Path) -> Callable[..., Path]:
    """Write scapy packets to a capture in tmp_path and return its path.

    Keywords: `name`; `fmt` "pcap" (scapy's wrpcap, native byte order), "pcap-be"/"pcap-le" (our own
    struct writer), "pcapng" (scapy's PcapNgWriter; packets with different `sniffed_on` go to
    different interfaces); `linktype`; `nano` for nanosecond timestamps.
    """
    counter = iter(range(1_000_000))

    def write(packets: Sequence[Packet], name: str | None = None, fmt: str = "pcap",
              linktype: int | None = None, nano: bool = False) -> Path:
        path = tmp_path / (name or f"capture{next(counter)}.{'pcapng' if fmt == 'pcapng' else 'pcap'}")
        if fmt == "pcap":
            wrpcap(str(path), list(packets), linktype=linktype, nano=nano)
        elif fmt in ("pcap-be", "pcap-le"):
            lt = linktype if linktype is not None else LINKTYPE_ETHERNET
            records = [(float(p.time), bytes(p)) for p in packets]
            path.write_bytes(pcap_bytes(records, lt, ">" if fmt == "pcap-be" else "<", nano))
        elif fmt == "pcapng":
            writer = PcapNgWriter(str(path))
            for pkt in packets:
                writer.write(pkt)
            writer.close()
        else:
            raise ValueError(fmt)
        return path

    return write


# --- running the flow table ------------------------------------------------------------------------


class FlowRun:
    """What a FlowTable run reported: records (on_close, in order), updates (at the flow's last packet
    time), closed Flow objects."""

    def __init__(self, config: FlowConfig) -> None:
        self.records: list[Record] = []
        self.reasons: list[str] = []
        self.closed: list[Flow] = []
        self.updates: list[tuple[float, int, int, int, int]] = []
        self.table = FlowTable(config, self._on_close, self._on_update)

    def _on_close(self, flow: Flow) -> None:
        self.closed.append(flow)
        self.reasons.append(flow.end_reason)
        self.records.append(flow_record(flow))

    def _on_update(self, flow: Flow) -> None:
        self.updates.append(
            (flow.last, flow.packets_out, flow.bytes_out, flow.packets_in, flow.bytes_in)
        )

    def only(self) -> Record:
        """The single record of a run that must have produced exactly one flow."""
        assert len(self.records) == 1, self.records
        return self.records[0]


@pytest.fixture
def run_flows() -> Callable[..., FlowRun]:
    """Run a capture file (or an iterable of frames) through a FlowTable and flush it."""

    def run(source: Path | Iterable[tuple[float, int, bytes, int]],
            config: FlowConfig | None = None) -> FlowRun:
        result = FlowRun(config or FlowConfig())
        frames = open_capture(source) if isinstance(source, Path) else source
        result.table.ingest(frames)
        result.table.flush()
        return result

    return run


def frames_of(packets: Iterable[Packet], linktype: int = LINKTYPE_ETHERNET) -> list[
    tuple[float, int, bytes, int]
]:
    """The reader's frame tuples for scapy packets, without writing a file."""
    out = []
    for pkt in packets:
        data = bytes(pkt)
        out.append((float(pkt.time), linktype, data, len(data)))
    return out


class Net:
    """The builders and constants above, for test modules (a fixture: `import conftest` is ambiguous
    next to tests/geo/conftest.py without package files)."""

    CLIENT, CLIENT2, SERVER, SERVER2 = CLIENT, CLIENT2, SERVER, SERVER2
    CLIENT6, SERVER6, T0 = CLIENT6, SERVER6, T0
    ETHERNET, RAW, SLL, SLL2 = LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2
    stamp = staticmethod(stamp)
    eth = staticmethod(eth)
    ip_len = staticmethod(ip_len)
    tcp = staticmethod(tcp)
    udp = staticmethod(udp)
    icmp_echo = staticmethod(icmp_echo)
    tcp_session = staticmethod(tcp_session)
    pcap_bytes = staticmethod(pcap_bytes)
    frames_of = staticmethod(frames_of)


@pytest.fixture
def net() -> type[Net]:
    """Packet builders and test addresses."""
    return Net
