"""`douane report`: evidence stores filled the real way (`douane demo`, `douane replay` of scapy-made
captures), reports made by the real command, every number of the summary checked against the store
with SQL of its own, the HTML opened in headless Chromium."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from scapy.utils import wrpcap

from douane.daemon.cli import Replay, default_policy_path
from douane.daemon.collector import CollectorConfig, FlowCollector
from douane.daemon.config import load_config
from douane.daemon.demo_capture import client_hello, dicom_associate_rq, tcp_session
from douane.daemon.report import (
    REGISTER_COLUMNS,
    Period,
    build,
    csv_rows,
    fmt_bytes,
    fmt_int,
    render_html,
    summary_lines,
)
from douane.daemon.report_i18n import TEXT

DOUANE = [sys.executable, "-m", "douane.daemon.cli"]
AZURE_FR, OVH_FR, GOOGLE = "20.199.120.7", "51.178.64.10", "142.250.179.110"
JUSTIFICATION = "DPIA 2026-04 and transfer register entry 12: replacement by the regional ENT planned"
EXCEPTION = f"""
  - id: ent-m365-transition
    rule: school-to-us-controlled
    provider: microsoft
    zone: pupil-records
    justification: "{JUSTIFICATION}"
    expires: 2099-06-30
"""
CONFIG = """
zones:
  - name: pacs
    networks: [10.20.0.0/24]
    categories: [health]
  - name: pupil-records
    networks: [10.40.0.0/24]
    categories: [school, personal]
policy: {policy}
"""


def at(day: str, hour: int = 10) -> float:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00").replace(tzinfo=UTC).timestamp()


def replay(folder: Path, packets: list[Any]) -> Path:
    """Fills `folder/state/evidence.sqlite` by replaying `packets` with zones and the exception."""
    folder.mkdir(parents=True, exist_ok=True)
    pcap = folder / "capture.pcap"
    wrpcap(str(pcap), sorted(packets, key=lambda p: float(p.time)))
    policy = folder / "policy.yaml"
    text = default_policy_path().read_text(encoding="utf-8")
    assert "exceptions: []\n" in text
    policy.write_text(text.replace("exceptions: []\n", "exceptions:" + EXCEPTION), encoding="utf-8")
    config = folder / "douane.yaml"
    config.write_text(CONFIG.format(policy=policy), encoding="utf-8")
    evidence = folder / "state" / "evidence.sqlite"
    result = subprocess.run([*DOUANE, "replay", str(pcap), "-c", str(config), "--evidence", str(evidence)],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return evidence


def report(evidence: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`douane report` on a store; with the replay's configuration (its policy) when there is one."""
    config = evidence.parent.parent / "douane.yaml"
    with_config = ["-c", str(config)] if config.is_file() and "--no-config" not in args else []
    args = tuple(a for a in args if a != "--no-config")
    return subprocess.run([*DOUANE, "report", "--evidence", str(evidence), *with_config, *args],
                          capture_output=True, text=True, check=False, timeout=120)


def report_json(evidence: Path, *args: str) -> dict[str, Any]:
    result = report(evidence, "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Health and school data in November 2026, health data in October, one flow in September."""
    p: list[Any] = []
    # November: the PACS to Azure France (US-controlled) twice, pupils' records to Google and to
    # Microsoft (the exception lowers school-to-us-controlled; personal-outside-eu remains), and the
    # PACS to OVHcloud France (allowed: not in the store).
    p += tcp_session("10.20.0.15", AZURE_FR, 50100, 104, at("2026-11-02"),
                     dicom_associate_rq("PACS", "ARCHIVE"), 20_000, 1_000)
    p += tcp_session("10.20.0.15", AZURE_FR, 50101, 443, at("2026-11-03"),
                     client_hello("hdh.blob.core.windows.net"), 50_000, 2_000)
    p += tcp_session("10.40.0.20", GOOGLE, 50102, 443, at("2026-11-03", 11),
                     client_hello("docs.google.com"), 8_000, 3_000)
    p += tcp_session("10.40.0.21", AZURE_FR, 50103, 443, at("2026-11-05"),
                     client_hello("teams.microsoft.com"), 6_000, 9_000)
    p += tcp_session("10.20.0.16", OVH_FR, 50104, 104, at("2026-11-05", 12),
                     dicom_associate_rq("PACS", "ARCHIVE"), 30_000, 1_000)
    # October (the previous period of November 1-28) and September (before both).
    p += tcp_session("10.20.0.15", AZURE_FR, 50105, 104, at("2026-10-20"),
                     dicom_associate_rq("PACS", "ARCHIVE"), 10_000, 1_000)
    p += tcp_session("10.20.0.15", AZURE_FR, 50106, 104, at("2026-09-01"),
                     dicom_associate_rq("PACS", "ARCHIVE"), 5_000, 1_000)
    return replay(tmp_path_factory.mktemp("months"), p)


def netflow5_sampled(src: str, sport: int, dst: str, dport: int, when: float, packets: int,
                     octets: int, interval: int) -> bytes:
    """A NetFlow v5 datagram (Cisco's v5 format) of one TCP record from an exporter sampling 1 packet
    in `interval`: header (version, count, sysUpTime ms, secs, nsecs, sequence, engine type and id,
    sampling mode 01 and interval), then the record (addresses, next hop, interfaces, packets,
    octets, first and last in sysUpTime ms, ports, pad, flags, protocol, tos, AS numbers, masks)."""
    header = struct.pack("!HHIIIIBBH", 5, 1, 100_000, int(when), 0, 0, 0, 0, 0x4000 | interval)
    record = struct.pack("!4s4s4xHHIIIIHHxBBB8x", bytes(map(int, src.split("."))),
                         bytes(map(int, dst.split("."))), 0, 0, packets, octets, 99_000, 99_500,
                         sport, dport, 0x1B, 6, 0)
    return header + record


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PACS's DICOM association to Azure France on 2026-11-10, captured (exact counts), and a
    firewall's NetFlow v5 record of another one that day, sampled 1 packet in 100 (estimates)."""
    folder = tmp_path_factory.mktemp("sampled")
    evidence = replay(folder, tcp_session("10.20.0.15", AZURE_FR, 50100, 104, at("2026-11-10"),
                                          dicom_associate_rq("PACS", "ARCHIVE"), 20_000, 1_000))
    config = dataclasses.replace(load_config(str(folder / "douane.yaml")), evidence_path=evidence)
    daemon = Replay.build(config, source="collector")
    assert daemon.evidence is not None
    daemon.geo.start()
    daemon.evidence.start()
    collector = FlowCollector(CollectorConfig(exporters=("192.0.2.1",)), daemon.pipeline.on_close)
    try:
        datagram = netflow5_sampled("10.20.0.15", 50200, AZURE_FR, 104, at("2026-11-10", 11),
                                    packets=30, octets=40_000, interval=100)
        assert collector.handle(datagram, "192.0.2.1", at("2026-11-10", 11)) == 1
    finally:
        daemon.evidence.stop()
    return evidence


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo capture's store: one day, 2026-11-28."""
    evidence = tmp_path_factory.mktemp("demo") / "evidence.sqlite"
    result = subprocess.run([*DOUANE, "demo", "--evidence", str(evidence)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return evidence


# --- the store's own answers (SQL written here, not the report's code) -------------------------------


def millis(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def seconds(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def sql(evidence: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{evidence}?mode=ro", uri=True)
    try:
        return db.execute(query, params).fetchall()
    finally:
        db.close()


def outside(evidence: Path, category: str, low: str, high: str) -> tuple[int, int]:
    """(flows, bytes sent) of `category` data outside EU jurisdiction that started in [low, high)."""
    ((flows, volume),) = sql(
        evidence,
        "SELECT count(*), coalesce(sum(f.bytes_out), 0) FROM flagged_flow f JOIN flagged_category c "
        "ON c.flow_id = f.id WHERE c.category = ? AND coalesce(f.jurisdiction, 'unknown') != 'eu' "
        "AND f.start_ms >= ? AND f.start_ms < ?",
        category, millis(low), millis(high),
    )
    return flows, volume


def check_summary(evidence: Path, data: dict[str, Any], low: str, high: str, prev_low: str) -> None:
    s = data["summary"]
    for category in ("health", "school"):
        flows, volume = outside(evidence, category, low, high)
        prev_flows, prev_volume = outside(evidence, category, prev_low, low)
        c = s["categories"][category]
        assert (c["flows"], c["bytes_out"]) == (flows, volume)
        assert (c["previous_flows"], c["previous_bytes_out"]) == (prev_flows, prev_volume)
        per_provider = dict(sql(
            evidence,
            "SELECT f.provider, sum(f.bytes_out) FROM flagged_flow f JOIN flagged_category c "
            "ON c.flow_id = f.id WHERE c.category = ? AND coalesce(f.jurisdiction, 'unknown') != 'eu' "
            "AND f.start_ms >= ? AND f.start_ms < ? GROUP BY f.provider",
            category, millis(low), millis(high),
        ))
        assert {p["provider"]: p["bytes_out"] for p in c["providers"]} == per_provider
        expected = None if prev_volume == 0 else round((volume - prev_volume) * 100 / prev_volume, 1)
        assert c["trend_percent"] == expected
    ((total, volume),) = sql(evidence, "SELECT count(*), coalesce(sum(bytes_out), 0) FROM flagged_flow "
                             "WHERE start_ms >= ? AND start_ms < ?", millis(low), millis(high))
    assert (s["flows"], s["bytes_out"]) == (total, volume)
    verdicts = dict(sql(evidence, "SELECT verdict, count(*) FROM flagged_flow WHERE start_ms >= ? AND "
                        "start_ms < ? GROUP BY verdict", millis(low), millis(high)))
    assert {k: v for k, v in s["verdicts"].items() if v} == verdicts
    ((excepted,),) = sql(evidence, "SELECT count(*) FROM flagged_flow WHERE coalesce(exception_rule, "
                         "exception_justification, exception_expires) IS NOT NULL "
                         "AND start_ms >= ? AND start_ms < ?", millis(low), millis(high))
    assert s["exception_flows"] == excepted


def summary_html(page: str) -> str:
    match = re.search(r'<ul class="summary">(.*?)</ul>', page, re.S)
    assert match
    return match.group(1)


# --- the tests -----------------------------------------------------------------------------------------


class TestSummary:
    def test_every_number_against_the_store(self, months: Path) -> None:
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28")
        assert data["period"] == {"since": "2026-11-01", "until": "2026-11-28",
                                  "previous_since": "2026-10-04", "previous_until": "2026-10-31"}
        check_summary(months, data, "2026-11-01", "2026-11-29", "2026-10-04")
        health, school = data["summary"]["categories"]["health"], data["summary"]["categories"]["school"]
        # What the capture holds: 2 health flows to Microsoft now, 1 in October; school to Google.
        assert (health["flows"], school["flows"]) == (2, 2)
        assert health["previous_flows"] == 1
        assert health["trend_percent"] is not None and health["trend_percent"] > 0
        assert [p["provider"] for p in school["providers"]] == ["google", "microsoft"]

    def test_the_page_says_the_same_numbers(self, months: Path, tmp_path: Path) -> None:
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28")
        for lang in ("fr", "en"):
            out = tmp_path / f"report-{lang}.html"
            result = report(months, "--since", "2026-11-01", "--until", "2026-11-28", "--lang", lang,
                            "-o", str(out))
            assert result.returncode == 0, result.stderr
            assert result.stdout == ""
            text = summary_html(out.read_text(encoding="utf-8"))
            s = data["summary"]
            for category in ("health", "school"):
                c = s["categories"][category]
                assert fmt_bytes(c["bytes_out"], lang) in text
                assert f"{fmt_int(c['flows'], lang)} " in text
                if c["previous_bytes_out"]:
                    assert fmt_bytes(c["previous_bytes_out"], lang) in text
            assert fmt_bytes(s["bytes_out"], lang) in text
            assert fmt_int(s["flows"], lang) in text
        fr = summary_html((tmp_path / "report-fr.html").read_text(encoding="utf-8"))
        assert "données de santé" in fr and "en hausse de" in fr
        en = summary_html((tmp_path / "report-en.html").read_text(encoding="utf-8"))
        assert "health data left EU jurisdiction" in en and "up " in en

    def test_previous_period_excludes_older_flows(self, months: Path) -> None:
        """September is before October 4: not in the previous period of November 1-28."""
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28")
        assert data["summary"]["categories"]["health"]["previous_bytes_out"] == outside(
            months, "health", "2026-10-04", "2026-11-01")[1]
        assert outside(months, "health", "2026-09-01", "2026-09-02")[0] == 1


class TestRegister:
    def test_rows_and_exception(self, months: Path) -> None:
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28")
        rows = {(r["provider"], r["service"], r["jurisdiction"], r["category"], r["zone"]): r
                for r in data["register"]}
        # The DICOM association (port 104, no service) and the blob storage upload: two rows.
        dicom = rows[("microsoft", None, "us", "health", "pacs")]
        health = rows[("microsoft", "azure-storage", "us", "health", "pacs")]
        assert (dicom["verdict"], dicom["rules"], dicom["flows"]) == ("critical", ["health-outside-eu"], 1)
        assert (health["verdict"], health["rules"], health["flows"]) == ("critical", ["health-outside-eu"], 1)
        health = {**health, "bytes_out": health["bytes_out"] + dicom["bytes_out"],
                  "first_seen": dicom["first_seen"]}
        ((volume, first, last),) = sql(
            months, "SELECT sum(bytes_out), min(start_ms), max(end_ms) FROM flagged_flow WHERE provider = "
            "'microsoft' AND zone = 'pacs' AND start_ms >= ? AND start_ms < ?",
            millis("2026-11-01"), millis("2026-11-29"))
        assert health["bytes_out"] == volume
        assert health["first_seen"].startswith(seconds(first))
        assert health["last_seen"].startswith(seconds(last))
        (school,) = [r for k, r in rows.items() if k[0] == "microsoft" and k[3] == "school"]
        (personal,) = [r for k, r in rows.items() if k[0] == "microsoft" and k[3] == "personal"]
        assert personal["exceptions"] == school["exceptions"]  # one flow, two data categories
        assert school["verdict"] == "notice"
        assert school["exceptions"] == [{"id": "ent-m365-transition", "rule": "school-to-us-controlled",
                                         "justification": JUSTIFICATION, "expires": "2099-06-30",
                                         "flows": 1}]
        google = [r["verdict"] for k, r in rows.items() if k[0] == "google" and k[3] == "school"]
        assert google == ["critical"]
        assert not any(r["provider"] == "ovhcloud" for r in data["register"])  # allowed: not flagged
        assert data["summary"]["exception_flows"] == 1

    def test_exception_without_the_policy(self, months: Path) -> None:
        """Without --config, the register shows what the store keeps: the exception's id."""
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28", "--no-config")
        rows = [r for r in data["register"] if r["exceptions"]]
        assert sorted(r["category"] for r in rows) == ["personal", "school"]
        for row in rows:
            assert row["exceptions"] == [
                {"id": None, "rule": None, "justification": "ent-m365-transition", "expires": None,
                 "flows": 1}
            ]

    def test_csv_is_the_register(self, months: Path, tmp_path: Path) -> None:
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28")
        out = tmp_path / "register.csv"
        result = report(months, "--since", "2026-11-01", "--until", "2026-11-28", "-o", str(out))
        assert result.returncode == 0, result.stderr
        rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
        assert tuple(rows[0]) == REGISTER_COLUMNS
        expected = [{k: str(v) for k, v in row.items()} for row in csv_rows(data)]
        assert rows == expected
        assert len(rows) == len(data["register"])
        excepted = [r for r in rows if r["exception_rule"]]
        assert [(r["exception_justification"], r["exception_expires"]) for r in excepted] == [
            (JUSTIFICATION, "2099-06-30")] * len(excepted)

    def test_html_register_and_provider_facts(self, months: Path, tmp_path: Path) -> None:
        out = tmp_path / "report.html"
        assert report(months, "--since", "2026-11-01", "--until", "2026-11-28", "--lang", "en",
                      "-o", str(out)).returncode == 0
        page = out.read_text(encoding="utf-8")
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28")
        body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
        assert body.count("<tr>") == len(data["register"])
        assert JUSTIFICATION in page and "expires 2099-06-30" in page
        # The facts: Microsoft's seat, the CLOUD Act with its source, Google's.
        assert "Microsoft Corporation" in page and "Clarifying Lawful Overseas Use of Data Act" in page
        assert '<a href="https://www.law.cornell.edu/uscode/text/18/2713">' in page
        assert "Google LLC" in page
        assert "<h2>Method</h2>" in page and "unknown counts as outside" in page

    def test_expired_exception_is_marked(self, months: Path) -> None:
        """Read after its expiry, an exception that applied then is shown as expired."""
        data = report_json(months, "--since", "2026-11-01", "--until", "2026-11-28", "--lang", "en")
        page = render_html(data, "en", today=date(2100, 1, 1))
        assert '<span class="expired">(expired 2099-06-30)</span>' in page
        assert "(expires 2099-06-30)" in render_html(data, "en", today=date(2026, 12, 1))


class TestSampled:
    def test_register_counts_sampled_flows(self, sampled: Path) -> None:
        """The register row and the summary say how many of their flows have estimated volumes."""
        data = report_json(sampled, "--since", "2026-11-10", "--until", "2026-11-10")
        ((estimated, volume),) = sql(sampled, "SELECT count(*), sum(bytes_out) FROM flagged_flow "
                                     "WHERE sampling_interval = 100")
        assert (estimated, volume) == (1, 4_000_000)  # 40,000 sampled bytes, times 100
        (row,) = data["register"]
        assert (row["category"], row["flows"], row["sampled_flows"]) == ("health", 2, 1)
        assert data["summary"]["sampled_flows"] == 1

    def test_page_marks_estimates(self, sampled: Path, months: Path) -> None:
        """Volumes that include estimates carry ≈ with a legend and a summary line; exact ones do not."""
        for lang, words in (("en", "1 of these flows come from sampled flow records"),
                            ("fr", "1 de ces flux viennent d'enregistrements de flux échantillonnés")):
            result = report(sampled, "--since", "2026-11-10", "--until", "2026-11-10", "--lang", lang)
            assert result.returncode == 0, result.stderr
            page = html.unescape(result.stdout)
            body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
            assert body.count('<td class="n">≈\u202f') == 2  # sent and received
            assert TEXT[lang]["sampled_legend"] in page
            assert words in summary_html(page)
        exact = report(months, "--since", "2026-11-01", "--until", "2026-11-28")
        assert exact.returncode == 0 and "≈" not in exact.stdout

    def test_csv_column(self, sampled: Path) -> None:
        """The CSV register has the count of sampled flows per row."""
        result = report(sampled, "--since", "2026-11-10", "--until", "2026-11-10", "--format", "csv")
        assert result.returncode == 0, result.stderr
        (row,) = csv.DictReader(io.StringIO(result.stdout, newline=""))
        assert (row["flows"], row["sampled_flows"]) == ("2", "1")


class TestStores:
    def test_store_not_yet_migrated(self, months: Path, tmp_path: Path) -> None:
        """A store of schema 1 (before issue 7; the daemon not restarted since an upgrade) is
        reported on as it is, left unchanged, its counts exact: the same report as once migrated."""
        copy = tmp_path / "months"
        shutil.copytree(months.parent.parent, copy)
        old = copy / "state" / "evidence.sqlite"
        db = sqlite3.connect(old)
        db.execute("ALTER TABLE flagged_flow DROP COLUMN sampling_interval")  # what schema 2 added
        db.execute("PRAGMA user_version = 1")
        db.commit()
        db.close()
        before = old.read_bytes()
        args = ("--since", "2026-11-01", "--until", "2026-11-28")
        data, migrated = report_json(old, *args), report_json(months, *args)
        assert old.read_bytes() == before
        for key in ("generated", "store"):  # when, and the file's path
            data.pop(key), migrated.pop(key)
        assert data == migrated
        assert data["summary"]["categories"]["health"]["flows"] == 2

    def test_store_without_tables(self, tmp_path: Path) -> None:
        """An empty file (schema 0) has nothing to report on: refused, naming the file."""
        empty = tmp_path / "state" / "evidence.sqlite"
        empty.parent.mkdir(parents=True)
        sqlite3.connect(empty).close()
        result = report(empty, "--since", "2026-11-01", "--until", "2026-11-28")
        assert result.returncode != 0
        assert str(empty) in result.stderr and "schema version 0" in result.stderr

    def test_one_day(self, demo: Path) -> None:
        data = report_json(demo, "--since", "2026-11-28", "--until", "2026-11-28")
        check_summary(demo, data, "2026-11-28", "2026-11-29", "2026-11-27")
        assert list(data["charts"]["by_day"]) == ["2026-11-28"]
        assert data["summary"]["categories"]["health"]["flows"] == 2
        assert data["summary"]["categories"]["health"]["providers"][0]["provider"] == "microsoft"

    def test_empty_store(self, tmp_path: Path) -> None:
        """A store that only saw allowed flows: created, empty; every format still says so."""
        evidence = replay(tmp_path, tcp_session("10.20.0.15", OVH_FR, 50200, 104, at("2026-11-02"),
                                                dicom_associate_rq("PACS", "ARCHIVE"), 20_000, 1_000))
        assert sql(evidence, "SELECT count(*) FROM flagged_flow") == [(0,)]
        data = report_json(evidence, "--since", "2026-11-01", "--until", "2026-11-30")
        check_summary(evidence, data, "2026-11-01", "2026-12-01", "2026-10-02")
        assert data["register"] == [] and data["providers"] == []
        csv_out = report(evidence, "--since", "2026-11-01", "--until", "2026-11-30", "--format", "csv")
        assert csv_out.stdout.strip() == ",".join(REGISTER_COLUMNS)
        page = report(evidence, "--since", "2026-11-01", "--until", "2026-11-30", "--lang", "en").stdout
        assert "No flagged flow in the period." in page
        assert "No health data left EU jurisdiction" in page

    def test_period_with_nothing(self, demo: Path) -> None:
        data = report_json(demo, "--since", "2026-01-01", "--until", "2026-01-31")
        assert data["summary"]["flows"] == 0
        assert summary_lines(data, "fr")[0] == "Aucun flux signalé sur la période."

    @pytest.mark.parametrize("damage", ["pages", "header", "not-douane", "missing", "empty"])
    def test_corrupt_store(self, demo: Path, tmp_path: Path, damage: str) -> None:
        broken = tmp_path / "evidence.sqlite"
        if damage == "pages":
            raw = bytearray(demo.read_bytes())
            raw[4096:] = b"\xa5" * (len(raw) - 4096)  # every page after the first
            broken.write_bytes(bytes(raw))
        elif damage == "header":
            broken.write_bytes(b"this is not a database" + bytes(5000))
        elif damage == "not-douane":
            db = sqlite3.connect(broken)
            db.execute("CREATE TABLE t (x)")
            db.commit()
            db.close()
        elif damage == "empty":
            broken.write_bytes(b"")
        out = tmp_path / "report.html"
        result = report(broken, "--since", "2026-11-01", "-o", str(out))
        assert result.returncode == 2
        assert result.stderr.startswith(f"douane report: {broken}")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert not out.exists()

    def test_a_year(self, months: Path, tmp_path: Path) -> None:
        """A year's page: 365 day bars' slots, about a dozen date labels, the same totals."""
        out = tmp_path / "year.html"
        result = report(months, "--since", "2026-01-01", "--until", "2026-12-31", "-o", str(out))
        assert result.returncode == 0, result.stderr
        page = out.read_text(encoding="utf-8")
        chart = page.split("<svg", 2)[1]
        assert 10 <= len(re.findall(r'font-size="11">\d\d-\d\d<', chart)) <= 13
        data = report_json(months, "--since", "2026-01-01", "--until", "2026-12-31")
        assert len(data["charts"]["by_day"]) == 365
        assert sum(sum(d.values()) for d in data["charts"]["by_day"].values()) == data["summary"]["bytes_out"]
        check_summary(months, data, "2026-01-01", "2027-01-01", "2025-01-01")

    def test_csv_cells_are_never_formulas(self) -> None:
        from douane.daemon.report import render_csv

        row = dict.fromkeys(REGISTER_COLUMNS, "") | {"exceptions": [], "rules": ["=cmd()"],
                                                     "location_countries": [], "provider": "+x"}
        text = render_csv({"register": [row]})
        assert "'=cmd()" in text and "'+x" in text

    def test_format_from_the_suffix(self, demo: Path, tmp_path: Path) -> None:
        for name, start in (("r.json", "{"), ("r.csv", "provider,"), ("r.html", "<!DOCTYPE html>"),
                            ("r.txt", "<!DOCTYPE html>")):
            assert report(demo, "--since", "2026-11-28", "-o", str(tmp_path / name)).returncode == 0
            assert (tmp_path / name).read_text(encoding="utf-8").startswith(start)

    def test_until_before_since(self, demo: Path) -> None:
        result = report(demo, "--since", "2026-11-28", "--until", "2026-11-01")
        assert result.returncode == 2 and "before" in result.stderr and "Traceback" not in result.stderr

    def test_build_in_process_matches_command(self, demo: Path) -> None:
        from douane.daemon.report import read_flows

        period = Period(date(2026, 11, 28), date(2026, 11, 28))
        flows, previous = read_flows(demo, period)
        data = build(flows, previous, period, demo)
        command = report_json(demo, "--since", "2026-11-28", "--until", "2026-11-28")
        for key in ("period", "summary", "register", "providers", "charts"):
            assert data[key] == command[key]


# --- HTML: self-contained, rendered by Chromium -------------------------------------------------------

RESOURCE = re.compile(
    r"<(?:link|script|img|iframe|object|embed|source|video|audio|image|use|input)\b[^>]*"
    r"(?:src|href|data|srcset|poster)\s*=", re.I)


def test_html_loads_nothing(months: Path) -> None:
    page = report(months, "--since", "2026-11-01", "--until", "2026-11-28").stdout
    assert page.startswith("<!DOCTYPE html>")
    assert not RESOURCE.search(page)
    assert "url(" not in page and "@import" not in page and "<script" not in page
    # Every http(s) URL is either the SVG namespace or the text and target of a plain link.
    for match in re.finditer(r"https?://[^\s\"<>]+", page):
        before = page[max(0, match.start() - 9):match.start()]
        assert before.endswith(('<a href="', '">', 'xmlns="')), before
        if before.endswith('xmlns="'):
            assert match.group() == "http://www.w3.org/2000/svg"
    # Charts are there and not empty.
    assert page.count("<svg") == 3
    assert len(re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[\d.]+"', page)) >= 6


def png_pixels(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, unfiltered pixel rows) of an 8-bit RGB or RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, header = 8, bytearray(), b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, chunk = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in {2, 6} and interlace == 0
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    out = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        out += line
        previous = line
    return width, height, bpp, bytes(out)


def chromium_render(chromium: str, page: Path, folder: Path) -> tuple[Path, list[str]]:
    """Screenshots `page` with every host name unresolvable; returns the PNG and the URLs the page
    itself asked for (from Chromium's net log: the browser's own background requests, which have no
    origin, are left out; the page's, from a file:// document, have the origin `null`)."""
    png, netlog = folder / "report.png", folder / "netlog.json"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={folder / 'profile'}", f"--screenshot={png}", "--window-size=1280,2000",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}", page.as_uri()],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0 and png.is_file(), result.stderr
    text = netlog.read_text(encoding="utf-8")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # cut short at exit: close the event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requested = [
        event["params"]["url"] for event in log["events"]
        if event["type"] == start_job and "url" in event.get("params", {})
        and event["params"].get("initiator") != "not an origin"
    ]
    return png, requested


def test_html_renders_in_chromium(months: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium): HTML not rendered")
    page = tmp_path / "report.html"
    assert report(months, "--since", "2026-11-01", "--until", "2026-11-28", "-o", str(page)).returncode == 0
    # The net log check sees a page's request: a copy of the page with one remote image.
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", '<img src="https://example.org/pixel.png"></body>'), encoding="utf-8")
    (tmp_path / "bad").mkdir()
    assert chromium_render(chromium, bad, tmp_path / "bad")[1] == ["https://example.org/pixel.png"]
    (tmp_path / "good").mkdir()
    png, requested = chromium_render(chromium, page, tmp_path / "good")
    assert requested == []
    width, height, bpp, pixels = png_pixels(png)
    assert (width, height) == (1280, 2000)
    grey = pixels[::bpp]  # the red channel of each pixel is enough to see ink on white
    mean = sum(grey) / len(grey)
    variance = sum((v - mean) ** 2 for v in grey[::7]) / len(grey[::7])
    assert variance > 500, variance  # a blank page is 0
    colours = {pixels[i:i + 3] for i in range(0, len(pixels), bpp * 3)}
    assert len(colours) > 50
    # The charts' bars are drawn: the US jurisdiction's and Microsoft's blue, the CN/second bar red.
    blue, red = bytes.fromhex("1565c0"), bytes.fromhex("c62828")
    counts = {blue: 0, red: 0}
    for i in range(0, len(pixels), bpp):
        colour = pixels[i:i + 3]
        if colour in counts:
            counts[colour] += 1
    assert counts[blue] > 5000 and counts[red] > 1000, counts


class TestMonthlyRun:
    def test_last_month_and_output_dir(self, tmp_path: Path) -> None:
        """--last-month is the previous calendar month; --output-dir writes the three formats."""
        from datetime import date

        from douane.daemon.report import last_month

        month = last_month(date(2026, 3, 15))
        assert (month.first, month.last) == (date(2026, 2, 1), date(2026, 2, 28))
        month = last_month(date(2027, 1, 1))
        assert (month.first, month.last) == (date(2026, 12, 1), date(2026, 12, 31))
        store = tmp_path / "state" / "evidence.sqlite"
        made = subprocess.run([*DOUANE, "demo", "--evidence", str(store)], capture_output=True,
                              text=True, check=False)
        assert made.returncode == 0, made.stderr
        out = tmp_path / "reports" / "monthly"
        result = subprocess.run([*DOUANE, "report", "--evidence", str(store), "--last-month",
                                 "--output-dir", str(out)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".html", ".json"]
        data = json.loads(next(out.glob("*.json")).read_text())
        assert data["period"]["until"] < data["generated"][:10]
