"""The verdict end to end: scapy-made captures replayed by the real command, with zones and the default
policy; the evidence store and the logs keep names, never the identifier values or payload bytes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scapy.utils import wrpcap

from douane.daemon.demo_capture import START, client_hello, dicom_associate_rq, tcp_session

DOUANE = [sys.executable, "-m", "douane.daemon.cli"]
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

AZURE_FR, OVH_FR, GOOGLE = "20.199.120.7", "51.178.64.10", "142.250.179.110"
ZONES = """
zones:
  - name: pacs
    networks: [10.20.0.0/24]
    categories: [health]
  - name: school-office
    networks: [10.40.0.0/24]
    categories: [personal]
"""


def nir_with_key(body: str) -> str:
    digits = int(body.replace(" ", ""))
    return f"{body} {97 - digits % 97:02d}"


VALID_NIR = nir_with_key("1 84 12 75 123 456")
INE_VALUE = "070803070AJ"


def replay(tmp_path: Path, packets: list[Any], *extra: str) -> tuple[list[dict[str, Any]], str, Path]:
    pcap = tmp_path / "capture.pcap"
    wrpcap(str(pcap), sorted(packets, key=lambda p: float(p.time)))
    config = tmp_path / "douane.yaml"
    config.write_text(ZONES)
    evidence = tmp_path / "state" / "evidence.sqlite"
    result = subprocess.run(
        [*DOUANE, "replay", str(pcap), "--json", "-c", str(config), "--evidence", str(evidence), *extra],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr, evidence


def to(records: list[dict[str, Any]], dst: str, dport: int) -> dict[str, Any]:
    return next(r for r in records if r["dst"] == dst and r["dport"] == dport)


class TestVerdicts:
    def test_pacs_dicom_to_microsoft_is_critical(self, tmp_path: Path) -> None:
        """The PACS zone sending a DICOM association to an Azure address is critical."""
        association = dicom_associate_rq("PACS", "ARCHIVE")
        packets = tcp_session("10.20.0.15", AZURE_FR, 50124, 104, START, association, 20_000, 1_000)
        records, _, _ = replay(tmp_path, packets)
        flow = to(records, AZURE_FR, 104)
        assert flow["data_categories"] == {"health": ["protocol:dicom", "zone:pacs"]}
        assert (flow["verdict"], flow["rule"]) == ("critical", "health-outside-eu")

    def test_long_flow_keeps_its_evidence(self, tmp_path: Path) -> None:
        """A long association (inspection stops after its first packets) keeps protocol:dicom."""
        association = dicom_associate_rq("PACS", "ARCHIVE")
        packets = tcp_session("10.20.0.15", AZURE_FR, 50126, 104, START, association, 200_000, 20_000)
        records, _, _ = replay(tmp_path, packets)
        flow = to(records, AZURE_FR, 104)
        assert flow["packets_out"] > 100
        assert "protocol:dicom" in flow["data_categories"]["health"]

    def test_pacs_dicom_to_ovhcloud_is_allowed(self, tmp_path: Path) -> None:
        """The same association to an OVHcloud address in France is allowed by the default policy."""
        association = dicom_associate_rq("PACS", "ARCHIVE")
        packets = tcp_session("10.20.0.15", OVH_FR, 50125, 104, START, association, 20_000, 1_000)
        records, _, _ = replay(tmp_path, packets)
        flow = to(records, OVH_FR, 104)
        assert flow["jurisdiction"] == "eu"
        assert (flow["verdict"], flow["rule"]) == ("allowed", None)

    def test_school_ine_to_google(self, tmp_path: Path) -> None:
        """A pupil's INE sent in clear to Google is school data, judged by the school rules."""
        body = json.dumps({"eleve": {"INE": INE_VALUE, "classe": "6B"}}).encode()
        request = (b"POST /upload HTTP/1.1\r\nHost: forms.example.com\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        packets = tcp_session("10.40.0.9", GOOGLE, 50200, 80, START, request, 0, 500)
        records, _, _ = replay(tmp_path, packets)
        flow = to(records, GOOGLE, 80)
        assert flow["data_categories"]["school"] == ["identifier:ine"]
        assert flow["verdict"] in ("warning", "critical")
        assert flow["rule"] in ("school-outside-eu", "school-stored-outside-eea", "school-to-us-controlled")

    def test_encrypted_payload_is_not_scanned(self, tmp_path: Path) -> None:
        """A TLS flow's payload is not read for identifiers: only its ClientHello is parsed."""
        tls = client_hello("pacs.example.org") + VALID_NIR.encode()
        packets = tcp_session("10.40.0.9", GOOGLE, 50201, 443, START, tls, 0, 500)
        records, _, _ = replay(tmp_path, packets)
        assert to(records, GOOGLE, 443)["data_categories"] == {"personal": ["zone:school-office"]}


class TestHl7Corpus:
    def test_hl7_capture_is_health(self, tmp_path: Path) -> None:
        """The corpus's HL7 v2 over MLLP capture is health data by protocol (no zone configured)."""
        capture = CORPUS / "pcap" / "hl7.pcap"
        if not capture.is_file():
            pytest.skip(f"no corpus at {CORPUS}")
        result = subprocess.run([*DOUANE, "replay", str(capture), "--json"], capture_output=True,
                                text=True, check=False, timeout=120)
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert any("protocol:hl7v2" in r["data_categories"].get("health", []) for r in records)


class TestPrivacy:
    def test_identifier_values_never_stored_or_logged(self, tmp_path: Path) -> None:
        """A NIR and an INE in clear: evidence names in the record, store and logs; the values nowhere."""
        body = ("MSH|^~\\&|LAB|HOSP|EXT|PARTNER|202611281000||ORU^R01|42|P|2.5\r"
                f"PID|1||{VALID_NIR}||DUPONT^JEAN\rNOTE|INE {INE_VALUE}\r").encode()
        request = b"\x0b" + body + b"\x1c\x0d"
        packets = tcp_session("10.20.0.30", AZURE_FR, 50300, 2575, START, request, 0, 200)
        records, stderr, evidence = replay(tmp_path, packets)
        flow = to(records, AZURE_FR, 2575)
        assert "identifier:nir" in flow["data_categories"]["health"]
        assert "protocol:hl7v2" in flow["data_categories"]["health"]
        assert flow["verdict"] == "critical"
        stored = evidence.read_bytes() + b"".join(p.read_bytes() for p in evidence.parent.glob("*-wal"))
        needles = [VALID_NIR.replace(" ", ""), VALID_NIR, INE_VALUE, "DUPONT"]
        for needle in needles:
            assert needle not in stderr
            assert needle not in json.dumps(records)
            assert needle.encode() not in stored
        with sqlite3.connect(evidence) as db:
            rows = db.execute("SELECT verdict, rule FROM flagged_flow WHERE dport = 2575").fetchall()
        assert rows == [("critical", "health-outside-eu")]
