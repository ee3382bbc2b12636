"""The declaration of a fixed set of flows, pinned: records, metrics, log lines, evidence, summary.

The expected outputs in `data/declarations/` were written by the code before the declaration was
made faster; any change of a field, a value, a label, a log key or a summary line fails here. When
an output changes on purpose, regenerate them (and review the diff):

    DOUANE_PIN_DECLARATIONS=1 python -m pytest tests/daemon/test_declaration_pinned.py

Two inputs: the demo capture replayed with the demo configuration, and a crafted set of flows given
to the pipeline directly (as the collector does) that reaches the corners: IPv4 and IPv6, mapped,
special-purpose and multicast addresses, every direction, names from every source, published cloud
ranges, zones with categories, policy exceptions in force and expired, long flows reported twice,
and every flow declared a second time so that cached answers are compared with fresh ones.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import generate_latest

from douane.daemon.cli import Replay, demo_capture
from douane.daemon.config import Config, load_config, parse_config
from douane.daemon.flows import Flow, InternalNetworks, direction_of
from douane.daemon.pcapfile import open_capture
from douane.daemon.pseudonym import SECRET_BYTES, SECRET_FILE

PINNED = Path(__file__).parent / "data" / "declarations"
RANGES = Path(__file__).resolve().parents[1] / "geo" / "data" / "ranges"
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
REGENERATE = os.environ.get("DOUANE_PIN_DECLARATIONS") == "1"

START = 1_795_860_000.0  # 2026-11-28T10:00:00Z

# Remote ends: providers (registry, ranges, AS only), other ASes, no AS, and special-purpose blocks.
REMOTES_V4 = (
    "142.250.74.110", "20.199.120.7", "20.19.1.1", "51.68.1.1", "95.216.1.1", "52.94.1.1",
    "35.180.1.1", "52.95.154.10", "104.16.1.1", "157.240.1.1", "163.172.1.1", "8.8.8.8", "8.8.4.4",
    "1.1.1.1", "9.9.9.9", "34.155.1.1", "34.1.2.3", "129.213.1.1", "73.1.2.3", "212.27.48.10",
    "31.13.64.1", "185.60.216.35", "41.1.1.1", "200.1.1.1", "1.0.0.1", "223.5.5.5", "77.88.8.8",
    "192.0.2.5", "198.51.100.7", "203.0.113.9", "100.64.1.1", "198.18.0.1", "192.88.99.1",
    "192.0.0.9", "192.0.0.170", "224.0.0.251", "239.255.255.250", "240.1.1.1", "255.255.255.255",
    "0.1.2.3", "127.0.0.1", "169.254.1.1", "172.16.5.5", "192.168.200.1", "10.99.0.1",
)
REMOTES_V6 = (
    "2a00:1450:4007:80e::200e", "2603:1020:800::1", "2603:1000::1", "2001:41d0::1", "2a01:4f8::1",
    "2606:4700::1111", "2001:4860:4860::8888", "2600:1900:40e0::1", "2a03:2880:f003::1",
    "::ffff:8.8.8.8", "::ffff:10.0.0.1", "::8.8.8.8", "2001:db8::1", "fe80::1", "ff02::1",
    "ff0e::1", "fc00::1", "2002:c000:201::1", "64:ff9b::808:808", "64:ff9b:1::1", "100::1",
    "2001::1", "2001:20::1", "2001:200::1", "3fff::1", "5f00::1", "::1", "::", "fec0::1",
    "2c0f:fb50::1", "240e::1",
)
LOCALS_V4 = ("10.20.0.15", "10.30.4.2", "10.40.1.10", "192.168.1.5", "10.20.0.77")
LOCALS_V6 = ("fd00:30::5", "fd00::5", "fd00:30::9")
NAMES: tuple[tuple[str | None, str | None], ...] = (
    (None, None), ("hdh.blob.core.windows.net", "tls_sni"), ("www.doctolib.fr", "tls_sni"),
    ("console.s3ns.io", "quic_sni"), ("example.org", "dns_query"), ("WWW.Google.COM.", "http_host"),
    ("files.ovh.net", "dns"), ("0123456a.index-education.net", "tls_sni"), ("cdn.example.net", "dns"),
    ("classroom.google.com", "quic_sni"), ("portal.azure.com", "tls_sni"),
)
EVIDENCE: tuple[dict[str, list[str]] | None, ...] = (
    None, {"health": ["protocol:dicom"]}, None, {"personal": ["identifier:email"]},
    {"school": ["identifier:ine"]}, None, {"health": ["protocol:hl7v2", "identifier:nir"],
                                           "personal": ["identifier:phone"]},
)
# (protocol, server port): ported and unported protocols.
PROTOCOLS = ((6, 443), (17, 443), (17, 53), (6, 104), (1, 0), (58, 0), (47, 0), (132, 2905), (6, 2575))

POLICY = """\
rules:
  - name: health-outside-eu
    when: {data_category: health, jurisdiction: [third, us, ru, cn]}
    verdict: critical
  - name: health-extraterritorial-exposure
    when:
      data_category: health
      exposure: [us-cloud-act, us-fisa-702, cn-national-intelligence-law, ru-sorm]
    verdict: critical
  - name: school-to-us-controlled
    when: {data_category: school, exposure: [us-cloud-act, us-fisa-702]}
    verdict: warning
  - name: personal-outside-eu
    when: {data_category: personal, jurisdiction: [third, us, ru, cn]}
    verdict: notice
  - name: unknown-destination
    when: {jurisdiction: unknown, direction: {not: [internal, external]}}
    verdict: notice
  - name: to-meta
    when: {provider: meta, location_zone: {not: eea}}
    verdict: warning
exceptions:
  - id: dpia-azure
    rule: health-outside-eu
    provider: microsoft
    justification: "DPIA 2026-04, transfer register entry 12"
    expires: 2099-12-31
  - rule: school-to-us-controlled
    service: google-classroom
    justification: "expired long ago"
    expires: 2001-01-01
  - rule: to-meta
    zone: offices
    justification: "the offices may use Meta's sites"
    expires: 2099-12-31
"""


def _crafted_config(tmp: Path, cache_size: int) -> Config:
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    state = tmp / "evidence"
    state.mkdir(exist_ok=True)
    # A fixed pseudonym secret, so that pseudonymised addresses are pinned too.
    (state / SECRET_FILE).write_bytes(bytes(range(SECRET_BYTES)))
    (state / SECRET_FILE).chmod(0o600)
    return parse_config(
        {
            "zones": [
                {"name": "pacs", "networks": ["10.20.0.0/24"], "categories": ["health"]},
                {"name": "offices", "networks": ["10.30.0.0/16", "fd00:30::/32"], "categories": ["personal"]},
                {"name": "pupil-records", "networks": ["10.40.1.10/32"], "categories": ["school"]},
            ],
            "policy": str(policy),
            "geo": {"ranges_dir": str(RANGES), "state_dir": str(tmp / "geo"), "cache_size": cache_size},
            "evidence": {"path": str(state / "evidence.sqlite")},
        },
        "pinned",
    )


def _packed(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def crafted_flows(internal: InternalNetworks, round_: int) -> list[tuple[Flow, bool]]:
    """The crafted flows, each with whether it is reported once (on_update) before it closes."""
    flows: list[tuple[Flow, bool]] = []
    index = 0
    for remotes, locals_ in ((REMOTES_V4, LOCALS_V4), (REMOTES_V6, LOCALS_V6)):
        for number, remote in enumerate(remotes):
            for shape in ("outbound", "inbound", "external", "internal"):
                if shape == "internal" and number % 4:
                    continue  # an internal flow does not depend on the remote end: a few suffice
                index += 1
                local = locals_[(number + index) % len(locals_)]
                proto, port = PROTOCOLS[index % len(PROTOCOLS)]
                if shape == "outbound":
                    src, dst, sport, dport = local, remote, 40000 + index, port
                elif shape == "inbound":
                    src, dst, sport, dport = remote, local, 50000 + index, port
                elif shape == "external":
                    src, dst, sport, dport = remotes[(number + 3) % len(remotes)], remote, 33000 + index, port
                else:
                    src, dst, sport, dport = local, locals_[(number + index + 1) % len(locals_)], 34000, port
                raw_src, raw_dst = _packed(src), _packed(dst)
                vlan = (index % 5) * 100
                first = START + index * 7.3 + round_ * 3600 + (index % 4) * 0.0005
                flow = Flow((vlan, proto, raw_src, sport, raw_dst, dport), vlan, proto, raw_src, sport,
                            raw_dst, dport, first, direction_of(internal, raw_src, raw_dst))
                flow.last = first + (index % 9) * 1.111 + round_ * 0.25
                flow.packets_out = index % 13
                flow.bytes_out = (index * 977) % 50_000 if index % 11 else 0
                flow.packets_in = index % 7 + round_
                flow.bytes_in = (index * 1_313) % 90_000 + round_
                flow.hostname, flow.hostname_source = NAMES[(index + round_) % len(NAMES)]
                flow.ech = index % 17 == 0
                evidence = EVIDENCE[index % len(EVIDENCE)]
                flow.evidence = {c: list(e) for c, e in evidence.items()} if evidence else None
                flows.append((flow, index % 6 == 0))
    return flows


def _json_line(record: dict[str, Any]) -> str:
    # As `douane replay --json` writes it (cli._json_sink).
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def _metrics(replay: Replay) -> list[str]:
    """The exposition, without what depends on the run or the release (process_*, creation
    timestamps, build_info)."""
    text = generate_latest(replay.registry).decode()
    return [
        line for line in text.splitlines()
        if not line.startswith(("process_", "# HELP process_", "# TYPE process_", "douane_build_info"))
        and "_created{" not in line and not line.split(" ")[0].endswith("_created")
    ]


def _events(logs: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(event, sort_keys=True, default=str) for event in logs
            if event.get("event") == "flagged_flow"]


def _outputs(replay: Replay, records: list[str], logs: list[dict[str, Any]], source: str) -> dict[str, Any]:
    summary = io.StringIO()
    replay.summary.render(summary, replay.table.stats, source)
    evidence: list[str] = []
    if replay.evidence is not None:
        evidence = [json.dumps(row, sort_keys=True) for row in replay.evidence.query(datetime(2000, 1, 1))]
    return {
        "records": records,
        "metrics": _metrics(replay),
        "log": _events(logs),
        "evidence": evidence,
        "summary": summary.getvalue().splitlines(),
    }


def run_demo(tmp: Path) -> dict[str, Any]:
    """`douane demo` with the evidence store, in process, pseudonyms off (their key is random)."""
    config = dataclasses.replace(
        load_config(DEMO_CONFIG), evidence_path=tmp / "demo-evidence" / "evidence.sqlite",
        pseudonymise_internal_addresses=False,
    )
    records: list[str] = []
    replay = Replay.build(config, [lambda record: records.append(_json_line(record))])
    with structlog.testing.capture_logs() as logs:
        replay.run(open_capture(demo_capture()))
    # The store closed with the run; reopen it to read what it kept.
    assert replay.evidence is not None
    replay.evidence.start()
    try:
        return _outputs(replay, records, logs, "demo.pcap")
    finally:
        replay.evidence.stop()


def run_crafted(tmp: Path, cache_size: int = 65536) -> dict[str, Any]:
    """The crafted flows through the collector's pipeline, twice over (fresh, then cached answers)."""
    config = _crafted_config(tmp, cache_size)
    records: list[str] = []
    replay = Replay.build(config, [lambda record: records.append(_json_line(record))], source="collector")
    replay.geo.start()
    replay.metrics.clock = lambda: START + 7200.0
    assert replay.evidence is not None
    replay.evidence.start()
    internal = InternalNetworks(config.flows.internal)
    pipeline = replay.pipeline
    try:
        with structlog.testing.capture_logs() as logs:
            for round_ in (0, 1):
                for flow, long_flow in crafted_flows(internal, round_):
                    if long_flow:
                        # A long flow: reported once, then more traffic, then its end.
                        pipeline.on_update(flow)
                        flow.packets_out += 3
                        flow.bytes_out += 1_500
                        flow.last += 300.0
                    pipeline.on_close(flow)
        return _outputs(replay, records, logs, "collector")
    finally:
        replay.evidence.stop()


def _check(name: str, outputs: dict[str, Any]) -> None:
    path = PINNED / f"{name}.json"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(outputs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        pytest.skip(f"regenerated {path}")
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert set(outputs) == set(expected)
    for part in expected:
        assert outputs[part] == expected[part], f"{name}: {part} differs from {path.name}"


class TestPinnedDeclarations:
    def test_demo_capture(self, tmp_path: Path) -> None:
        """The demo capture's records, metrics, flagged-flow log lines, evidence rows and summary are
        exactly the pinned ones."""
        _check("demo", run_demo(tmp_path))

    def test_crafted_flows(self, tmp_path: Path) -> None:
        """The crafted flows' records, metrics, log lines, evidence rows and summary are exactly the
        pinned ones."""
        outputs = run_crafted(tmp_path)
        assert len(outputs["records"]) > 400 and outputs["log"] and outputs["evidence"]
        _check("crafted", outputs)

    def test_without_caches(self, tmp_path: Path) -> None:
        """With caches of one entry, every record is the same: caches change no answer."""
        if REGENERATE:
            pytest.skip("nothing to regenerate")
        expected = json.loads((PINNED / "crafted.json").read_text(encoding="utf-8"))
        assert run_crafted(tmp_path, cache_size=1)["records"] == expected["records"]
