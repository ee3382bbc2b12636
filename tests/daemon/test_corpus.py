"""Conformance with real captures: douane's flows against the shared corpus's `expected.jsonl`.

The corpus (../shared/corpus beside the repository, or the folder named by $DOUANE_CORPUS) holds nDPI
regression captures and the flows nDPI and tshark agree on. For every TCP/UDP flow there, douane's
flows on the same 5-tuple and VLAN (summed: timeouts and FIN may split one 5-tuple into several flows)
must carry the same packets from each endpoint, whichever endpoint either tool calls the source.

Two differences in what is counted are computed here independently, with scapy, frame by frame:
- nDPI counts only the first fragment of a fragmented datagram, douane every fragment: the non-first
  fragments (IPv4 offset > 0, IPv6 Fragment header offset > 0) are added to the expectation.
- nDPI counts frame bytes, douane IP-layer bytes: each frame's link-layer overhead (its header,
  Ethernet 14 + 4 per VLAN tag, cooked 16/20, and any trailer such as Ethernet padding) is removed.

Each pcap is replayed once per session; the geo databases are started once and shared.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from scapy.layers import ppp  # noqa: F401  (registers PPPoE, so dns.pcap's frames decode down to IP)
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q
from scapy.utils import PcapReader

from douane.daemon.cli import Replay, geo_config
from douane.daemon.config import Config
from douane.daemon.pcapfile import open_capture
from douane.geo.lookup import GeoDatabases

ENV = "DOUANE_CORPUS"
DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

Endpoint = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
FlowKey = tuple[int | None, str, frozenset[Endpoint]]


def corpus_dir() -> tuple[Path | None, str]:
    """The corpus folder, or None and why not."""
    if os.environ.get(ENV):
        path = Path(os.environ[ENV])
        where = f"${ENV}={path}"
    else:
        path = DEFAULT
        where = str(path)
    if not (path / "pcap").is_dir() or not (path / "expected.jsonl").is_file():
        return None, f"no packet-capture corpus at {where} (needs pcap/ and expected.jsonl)"
    return path, where


CORPUS, WHERE = corpus_dir()
PCAPS = sorted(p.name for p in (CORPUS / "pcap").iterdir()) if CORPUS else []


def endpoint(addr: str, port: int) -> Endpoint:
    # Both sides through ipaddress: douane prints RFC 5952 text, the corpus sometimes does not.
    return ipaddress.ip_address(addr), int(port)


def flow_key(vlan: int | None, proto: str, a: Endpoint, b: Endpoint) -> FlowKey:
    return (vlan or None, proto, frozenset((a, b)))


class FrameFacts:
    """Per flow and sending endpoint, what scapy sees that the corpus does not count like douane."""

    def __init__(self, path: Path) -> None:
        self.nonfirst_packets: Counter[tuple[FlowKey, Endpoint]] = Counter()
        self.nonfirst_bytes: Counter[tuple[FlowKey, Endpoint]] = Counter()
        self.link_overhead: Counter[tuple[FlowKey, Endpoint]] = Counter()
        self.unmatched_fragments = 0
        first_ports: dict[tuple[Any, ...], tuple[int, int]] = {}
        with PcapReader(str(path)) as reader:
            for pkt in reader:
                self._frame(pkt, first_ports)

    def _frame(self, pkt: Any, first_ports: dict[tuple[Any, ...], tuple[int, int]]) -> None:
        vlan = None
        layer = pkt
        while layer is not None and not isinstance(layer, IP | IPv6):
            if isinstance(layer, Dot1Q):
                vlan = layer.vlan  # innermost wins: the last tag on the way in
            layer = layer.payload if layer.payload else None
        if layer is None:
            return
        ip = layer
        if isinstance(ip, IP):
            ip_bytes = ip.len
            nonfirst = ip.frag > 0
            frag_id = (ip.src, ip.dst, ip.id, ip.proto) if (ip.flags.MF or nonfirst) else None
            proto_num = ip.proto
        else:
            ip_bytes = ip.plen + 40
            frag = ip.getlayer(IPv6ExtHdrFragment)
            nonfirst = bool(frag and frag.offset > 0)
            frag_id = (ip.src, ip.dst, frag.id, frag.nh) if frag else None
            proto_num = frag.nh if frag else (TCP in ip and 6) or (UDP in ip and 17) or ip.nh
        proto = {6: "tcp", 17: "udp"}.get(proto_num)
        if proto is None:
            return
        wirelen = pkt.wirelen if pkt.wirelen is not None else len(pkt)
        if nonfirst:
            ports = first_ports.get(frag_id)
            if ports is None:
                self.unmatched_fragments += 1
                return
        else:
            l4 = ip[TCP] if proto == "tcp" else ip[UDP]
            ports = (l4.sport, l4.dport)
            if frag_id is not None:
                first_ports[frag_id] = ports
        src = endpoint(ip.src, ports[0])
        key = flow_key(vlan, proto, src, endpoint(ip.dst, ports[1]))
        if nonfirst:
            self.nonfirst_packets[key, src] += 1
            self.nonfirst_bytes[key, src] += ip_bytes
        else:
            self.link_overhead[key, src] += wirelen - ip_bytes


@functools.cache
def shared_geo() -> GeoDatabases:
    """One started set of geo databases for every capture (starting them costs about 0.5 s)."""
    geo = GeoDatabases(geo_config(Config()))
    geo.start()
    return geo


@functools.cache
def douane_records(path: Path) -> tuple[dict[str, Any], ...]:
    """douane's flow records for a capture, replayed once per test session."""
    records: list[dict[str, Any]] = []
    replay = Replay.build(Config(), [records.append], geo=shared_geo())
    replay.run(open_capture(path))
    return tuple(records)


def douane_flows(path: Path) -> dict[FlowKey, dict[Endpoint, list[int]]]:
    """douane's packets and bytes per flow key and sending endpoint, summed over its flows."""
    records = douane_records(path)
    sums: dict[FlowKey, dict[Endpoint, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for rec in records:
        if rec["proto"] not in ("tcp", "udp"):
            continue
        src, dst = endpoint(rec["src"], rec["sport"]), endpoint(rec["dst"], rec["dport"])
        per = sums[flow_key(rec["vlan"], rec["proto"], src, dst)]
        per[src][0] += rec["packets_out"]
        per[src][1] += rec["bytes_out"]
        per[dst][0] += rec["packets_in"]
        per[dst][1] += rec["bytes_in"]
    return sums


def expected_flows(pcap: str) -> list[dict[str, Any]]:
    assert CORPUS is not None
    with (CORPUS / "expected.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [r for r in rows if r["pcap"] == pcap and r["proto"] in ("tcp", "udp")]


@pytest.mark.parametrize("pcap", PCAPS or [pytest.param(None, id="corpus-absent")])
class TestCorpus:
    """Each corpus capture's TCP/UDP flows, as douane counts them."""

    @pytest.fixture
    def capture(self, pcap: str | None) -> Path:
        if CORPUS is None:
            if os.environ.get(ENV):
                pytest.fail(f"${ENV} is set but {WHERE}")
            pytest.skip(WHERE)
        return CORPUS / "pcap" / pcap

    def test_counts_match_expected(self, capture: Path, pcap: str) -> None:
        """Per endpoint, packets and IP-layer bytes match the corpus, fragments and link layer accounted."""
        expected = expected_flows(pcap)
        if not expected:
            pytest.skip(f"{pcap}: no TCP/UDP flow in expected.jsonl")
        facts = FrameFacts(capture)
        assert facts.unmatched_fragments == 0, "a non-first fragment came before its first fragment"
        ours = douane_flows(capture)
        problems = []
        for exp in expected:
            src = endpoint(exp["src"], exp["sport"])
            dst = endpoint(exp["dst"], exp["dport"])
            key = flow_key(exp["vlan"], exp["proto"], src, dst)
            want = {}
            for ep, packets, nbytes in (
                (src, exp["src2dst_packets"], exp["src2dst_bytes"]),
                (dst, exp["dst2src_packets"], exp["dst2src_bytes"]),
            ):
                want[ep] = [
                    packets + facts.nonfirst_packets[key, ep],
                    nbytes - facts.link_overhead[key, ep] + facts.nonfirst_bytes[key, ep],
                ]
            got = {ep: ours[key][ep] if key in ours else [0, 0] for ep in (src, dst)}
            if got != want:
                problems.append(
                    f"flow {exp['ndpi_flow_index']} {exp['proto']} vlan={exp['vlan']} "
                    f"{exp['src']}:{exp['sport']} <-> {exp['dst']}:{exp['dport']}: "
                    f"[packets, bytes] per sender expected {list(want.values())}, "
                    f"douane {list(got.values())}"
                )
        assert not problems, "\n".join(problems)


class TestCorpusIndex:
    """The corpus itself: every expectation is checked by a capture test above."""

    @pytest.fixture
    def corpus(self) -> Path:
        if CORPUS is None:
            if os.environ.get(ENV):
                pytest.fail(f"${ENV} is set but {WHERE}")
            pytest.skip(WHERE)
        return CORPUS

    def test_every_expected_capture_present(self, corpus: Path) -> None:
        """Every capture named in expected.jsonl is in pcap/, so no expectation goes unchecked."""
        with (corpus / "expected.jsonl").open(encoding="utf-8") as fh:
            named = {json.loads(line)["pcap"] for line in fh if line.strip()}
        assert named <= set(PCAPS)

    def test_fragment_adjustment_exercised(self, corpus: Path) -> None:
        """The corpus has non-first fragments inside compared flows, so the adjustment is tested."""
        path = corpus / "pcap" / "dns_fragmented.pcap"
        if not path.is_file():
            pytest.skip(f"{path} absent")
        facts = FrameFacts(path)
        assert sum(facts.nonfirst_packets.values()) > 0
        assert facts.unmatched_fragments == 0


# nDPI's hostname kinds and the hostname_source douane gives the same name. gQUIC (Q0xx/T0xx) carries
# its name in an unencrypted CHLO that douane does not parse (README: left out on purpose).
KINDS = {"tls_sni": "tls_sni", "quic_sni": "quic_sni", "http_host": "http_host", "dns_query": "dns_query"}
LEFT_OUT_QUIC = {"gquic"}
HOSTNAME_TARGET = 0.95


def expected_named_flows() -> list[dict[str, Any]]:
    assert CORPUS is not None
    with (CORPUS / "expected.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [
        r for r in rows
        if r["proto"] in ("tcp", "udp") and r.get("hostname") and r.get("hostname_kind") in KINDS
        and r.get("quic_family") not in LEFT_OUT_QUIC
    ]


class TestCorpusHostnames:
    """Identity on real captures: the hostname douane reports against nDPI's (issue 3)."""

    def test_hostnames_match(self) -> None:
        """At least 95 % of the flows nDPI names by SNI, Host, DNS or QUIC get the same name from douane."""
        if CORPUS is None:
            if os.environ.get(ENV):
                pytest.fail(f"${ENV} is set but {WHERE}")
            pytest.skip(WHERE)
        expected = expected_named_flows()
        assert len(expected) > 250, "the corpus lost its named flows"
        misses = []
        for exp in expected:
            src = endpoint(exp["src"], exp["sport"])
            dst = endpoint(exp["dst"], exp["dport"])
            key = flow_key(exp["vlan"], exp["proto"], src, dst)
            ours = [
                rec for rec in douane_records(CORPUS / "pcap" / exp["pcap"])
                if rec["proto"] == exp["proto"]
                and flow_key(rec["vlan"], rec["proto"], endpoint(rec["src"], rec["sport"]),
                             endpoint(rec["dst"], rec["dport"])) == key
            ]
            names = {(rec["hostname"], rec["hostname_source"]) for rec in ours}
            want = (exp["hostname"].lower(), KINDS[exp["hostname_kind"]])
            if want not in names:
                misses.append(
                    f"{exp['pcap']} #{exp['ndpi_flow_index']} {exp['hostname_kind']}: nDPI "
                    f"{exp['hostname']!r}, douane {sorted(names, key=str)}"
                    + (f" ({exp['note']})" if exp.get("note") else "")
                )
        rate = 1 - len(misses) / len(expected)
        print(f"\nhostnames: {len(expected) - len(misses)}/{len(expected)} match ({rate:.1%}); misses:")
        for miss in misses:
            print("  " + miss)
        assert rate >= HOSTNAME_TARGET, f"{rate:.1%} < {HOSTNAME_TARGET:.0%}:\n" + "\n".join(misses)
