"""Client payloads per flow from the shared corpus captures, for the payload dissectors' tests.

Loaded by tests/daemon/test_tls.py, test_http.py and test_quic.py (by path: tests/ has no package
files). scapy reads the captures; TCP streams are put back in sequence order per direction, UDP
datagrams kept in capture order per direction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Padding
from scapy.utils import PcapReader

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
STREAM_BOUND = 256 * 1024  # the most of a TCP stream kept per direction

Key = tuple[str, int, str, int]  # src, sport, dst, dport of one direction


def expected(kinds: set[str]) -> list[dict[str, Any]]:
    """The corpus records whose hostname comes from one of `kinds` (nDPI's hostname_kind)."""
    out = []
    with (CORPUS / "expected.jsonl").open() as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("hostname_kind") in kinds and rec.get("hostname"):
                out.append(rec)
    return out


def _data(layer: Any, header: int) -> bytes:
    """A transport segment's data, without the zeros Ethernet pads short frames with (scapy keeps
    them as a Padding layer after the data)."""
    raw = bytes(layer)
    if Padding in layer:
        raw = raw[: len(raw) - len(bytes(layer[Padding]))]
    return raw[header:]


@cache
def _read(name: str) -> tuple[dict[Key, list[tuple[int, int, bytes]]], dict[Key, list[bytes]]]:
    tcp: dict[Key, list[tuple[int, int, bytes]]] = defaultdict(list)
    udp: dict[Key, list[bytes]] = defaultdict(list)
    with PcapReader(str(CORPUS / "pcap" / name)) as reader:
        for pkt in reader:
            if IP in pkt:
                ip = pkt[IP]
            elif IPv6 in pkt:
                ip = pkt[IPv6]
            else:
                continue
            if TCP in pkt:
                seg = pkt[TCP]
                key = (ip.src, int(seg.sport), ip.dst, int(seg.dport))
                tcp[key].append((int(seg.seq), int(seg.flags), _data(seg, seg.dataofs * 4)))
            elif UDP in pkt:
                dgram = pkt[UDP]
                key = (ip.src, int(dgram.sport), ip.dst, int(dgram.dport))
                udp[key].append(_data(dgram, 8))
    return dict(tcp), dict(udp)


def tcp_stream(name: str, key: Key) -> bytes:
    """One direction's byte stream from its first byte (after the SYN, or the lowest sequence
    number seen), in sequence order, up to the first hole."""
    segs = _read(name)[0].get(key, [])
    syn = [seq for seq, flags, _ in segs if flags & 0x02]
    data = [(seq, payload) for seq, _, payload in segs if payload]
    if not data:
        return b""
    base = (syn[0] + 1) & 0xFFFFFFFF if syn else min(seq for seq, _ in data)
    rel = sorted((((seq - base) & 0xFFFFFFFF), payload) for seq, payload in data)
    out = bytearray()
    for off, payload in rel:
        if off > len(out) or off >= STREAM_BOUND:
            break
        out += payload[len(out) - off:]
    return bytes(out)


def udp_datagrams(name: str, key: Key) -> list[bytes]:
    """One direction's UDP payloads in capture order."""
    return _read(name)[1].get(key, [])


def directions(rec: dict[str, Any]) -> list[Key]:
    """Both directions of a corpus record's flow, nDPI's first-packet direction first."""
    a = (rec["src"], int(rec["sport"]), rec["dst"], int(rec["dport"]))
    return [a, (a[2], a[3], a[0], a[1])]
