"""The `douane` command line, run as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from douane.daemon.cli import demo_capture

DOUANE = [sys.executable, "-m", "douane.daemon.cli"]
RANGES = Path(__file__).resolve().parents[1] / "geo" / "data" / "ranges"

# DESIGN.md's flow record, in its order, plus `vlan` (README: flows are keyed by VLAN too) and
# `ech` (issue 3: the name came from an Encrypted Client Hello's outer, public name) and `zone`
# (issue 5: the configured zone of the internal endpoint, which the policy and evidence use), and
# `sampled` / `sampling_interval` (issue 7: counters scaled up from a sampling exporter's records).
RECORD_FIELDS = [
    "start", "end", "proto", "src", "sport", "dst", "dport", "vlan", "direction", "zone",
    "packets_out", "bytes_out", "packets_in", "bytes_in", "sampled", "sampling_interval",
    "hostname", "hostname_source", "ech", "service", "asn", "as_name",
    "location_country", "location_zone", "provider", "controller_country", "controller_zone",
    "exposure", "jurisdiction", "data_categories", "verdict", "rule", "exception",
]


def douane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DOUANE, *args], capture_output=True, text=True, check=False, timeout=120)


class TestDemo:
    def test_prints_destinations(self) -> None:
        """`douane demo` prints a table of destinations with ASNs, AS names and countries."""
        result = douane("demo")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert "207 packets, 8 flows (1 inbound, 7 outbound)" in lines[0]
        table = "\n".join(lines)
        for asn, country in (("AS8075", "FR"), ("AS15169", "US"), ("AS16276", "FR"), ("AS24940", "DE")):
            row = next(line for line in lines if f" {asn} " in line)
            assert f" {country} " in row
        assert "Microsoft" in table

    def test_demo_flags_and_keeps_evidence(self, tmp_path: Path) -> None:
        """The demo flags the PACS's DICOM association to Azure as critical and keeps it as evidence."""
        store = tmp_path / "state" / "evidence.sqlite"
        result = douane("demo", "--evidence", str(store))
        assert result.returncode == 0, result.stderr
        assert "critical  health-outside-eu" in result.stdout
        import sqlite3

        with sqlite3.connect(store) as db:
            rows = db.execute(
                "SELECT f.dport, f.verdict, f.rule, c.evidence FROM flagged_flow f "
                "JOIN flagged_category c ON c.flow_id = f.id WHERE c.category = 'health'"
            ).fetchall()
        assert (104, "critical", "health-outside-eu", '["protocol:dicom", "zone:pacs"]') in rows
        assert '"event": "flagged_flow"' in result.stderr

    def test_demo_capture_is_reproducible(self, tmp_path: Path) -> None:
        """The committed demo capture is exactly what its script makes."""
        out = tmp_path / "demo.pcap"
        made = subprocess.run([sys.executable, "-m", "douane.daemon.demo_capture", str(out)],
                              check=False, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        assert out.read_bytes() == demo_capture().read_bytes()


@pytest.fixture(scope="module")
def records() -> list[dict[str, object]]:
    result = douane("replay", str(demo_capture()), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


class TestReplayJson:
    def test_fields_are_design_record(self, records: list[dict[str, object]]) -> None:
        """Each line is one flow record with exactly DESIGN.md's fields, in order, plus vlan."""
        assert len(records) == 8
        for record in records:
            assert list(record) == RECORD_FIELDS

    def test_azure_flow(self, records: list[dict[str, object]]) -> None:
        """The PACS upload to Azure France Central is outbound, AS8075, FR, eea, with exact counts."""
        flow = next(r for r in records if r["dport"] == 443 and r["dst"] == "20.199.120.7")
        assert flow["src"] == "10.20.0.15" and flow["sport"] == 50123
        assert flow["direction"] == "outbound"
        assert (flow["asn"], flow["location_country"], flow["location_zone"]) == (8075, "FR", "eea")
        assert flow["start"] == "2026-11-28T10:00:01.000Z"
        # 3 handshake, hello, 43 segments of upload (60,000 / 1,400 rounded up), FIN, last ACK.
        assert flow["packets_out"] == 3 - 1 + 1 + 43 + 2
        # Microsoft's Paris region: an EEA location under a US controller (issue 4).
        assert (flow["provider"], flow["controller_country"], flow["controller_zone"]) == (
            "microsoft", "US", "third")
        assert flow["exposure"] == ["us-cloud-act", "us-fisa-702"]
        assert flow["jurisdiction"] == "us"
        assert flow["data_categories"] == {}

    def test_inbound_and_vlan(self, records: list[dict[str, object]]) -> None:
        """A visitor's connection is inbound from its opener; VLAN-tagged flows carry their tag."""
        inbound = next(r for r in records if r["direction"] == "inbound")
        assert inbound["src"] == "203.0.113.50" and inbound["dst"] == "10.10.0.5"
        assert inbound["asn"] is None and inbound["location_zone"] == "unknown"
        tagged = [r for r in records if r["vlan"] == 30]
        assert {r["dst"] for r in tagged} == {"142.250.179.110", "51.178.64.10"}

    def test_every_jurisdiction_field_filled(self, records: list[dict[str, object]]) -> None:
        """Every flow with a remote AS has provider, controller, zone and jurisdiction decided."""
        expected = {
            "20.199.120.7": ("microsoft", "us"),
            "142.250.179.110": ("google", "us"),
            "51.178.64.10": ("ovhcloud", "eu"),
            "2a01:4f8::1": ("hetzner", "eu"),
        }
        for record in records:
            if record["asn"] is None:
                continue
            assert record["provider"] and record["controller_country"]
            assert record["controller_zone"] != "unknown" and record["jurisdiction"] != "unknown"
            if record["dst"] in expected:
                assert (record["provider"], record["jurisdiction"]) == expected[str(record["dst"])]

    def test_ipv6_flow(self, records: list[dict[str, object]]) -> None:
        """The IPv6 flow to Hetzner is found with RFC 5952 addresses."""
        flow = next(r for r in records if r["dst"] == "2a01:4f8::1")
        assert flow["src"] == "fd00:30::23"
        assert (flow["asn"], flow["location_country"]) == (24940, "DE")


class TestLookup:
    def test_stable_facts(self) -> None:
        """lookup answers ASN, AS name, country and zone, and names the databases that answered."""
        result = douane("lookup", "8.8.8.8", "51.178.0.1")
        assert result.returncode == 0, result.stderr
        assert "AS15169 Google LLC" in result.stdout
        assert "AS16276" in result.stdout
        assert "country.mmdb.gz (built 20" in result.stdout

    def test_json(self) -> None:
        """lookup --json gives one object per address, IPv4-mapped addresses answered as IPv4."""
        result = douane("lookup", "--json", "::ffff:8.8.8.8", "10.1.2.3", "not-an-address")
        assert result.returncode == 0, result.stderr
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert answers[0]["asn"] == 15169 and answers[0]["location_country"] == "US"
        assert answers[0]["location_zone"] == "third"
        assert answers[1]["asn"] is None and answers[2]["asn"] is None
        assert answers[0]["databases"]["country"]["built"].startswith("20")


    def test_explains_azure_paris(self) -> None:
        """An Azure Paris address is explained as US-controlled, with each answer's source."""
        result = douane("lookup", "20.199.120.7")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        for line in ("location:     FR (eea)", "provider:     microsoft (Microsoft Corporation)",
                     "controller:   US (third)", "exposure:     us-cloud-act, us-fisa-702",
                     "jurisdiction: us", "EU-US DPF:    certified"):
            assert line in out
        assert "AS8075 in the registry [https://www.peeringdb.com/asn/8075]" in out
        assert "[https://www.law.cornell.edu/uscode/text/18/2713]" in out
        assert "provider registry: " in out and "providers.yaml" in out

    def test_hostname_is_matched_not_resolved(self) -> None:
        """A host name is matched against the registry and the catalogue, and says it is not resolved."""
        result = douane("lookup", "--json", "console.s3ns.io", "www.ovhcloud.com", "no such!")
        assert result.returncode == 0, result.stderr
        s3ns, ovh, bad = (json.loads(line) for line in result.stdout.splitlines())
        assert s3ns["kind"] == "hostname" and "not resolved" in s3ns["note"]
        assert (s3ns["provider"], s3ns["controller_country"]) == ("s3ns", "FR")
        assert s3ns["location_zone"] == "unknown"
        assert ovh["provider"] == "ovhcloud"
        assert bad["kind"] == "invalid"

    def test_range_file_evidence(self, tmp_path: Path) -> None:
        """With geo.ranges_dir, the answer names the range file, the region and its country."""
        config = tmp_path / "douane.yaml"
        config.write_text(f"geo:\n  ranges_dir: {RANGES}\n  state_dir: {tmp_path / 'state'}\n")
        result = douane("lookup", "--json", "-c", str(config), "20.199.120.7")
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert (answer["region"], answer["range_service"]) == ("francecentral", "AzureStorage")
        sources = [e["source"] for e in answer["evidence"] if e["field"] == "provider"]
        assert sources[0].endswith("ServiceTags_Public_20261123.json")
        assert len(answer["range_files"]) == 7


class TestUpdateDb:
    def test_from_folder_then_corrupt_refused(self, tmp_path: Path) -> None:
        """update-db --from installs verified range files; a corrupt one later changes nothing."""
        state = tmp_path / "state"
        config = tmp_path / "douane.yaml"
        config.write_text(f"geo:\n  state_dir: {state}\n")
        incoming = tmp_path / "in"
        shutil.copytree(RANGES, incoming)
        result = douane("update-db", "-c", str(config), "--from", str(incoming))
        assert result.returncode == 0, result.stderr
        assert "verified range file ip-ranges.json: aws" in result.stdout
        current = (state / "current").resolve()
        lookup = douane("lookup", "--json", "-c", str(config), "35.180.1.1")
        assert json.loads(lookup.stdout)["region"] == "eu-west-3"

        (incoming / "goog.json").write_text(
            '{"creationTime": "x", "prefixes": [{"ipv4Prefix": "8.8.8.0/33"}]}')
        result = douane("update-db", "-c", str(config), "--from", str(incoming))
        assert result.returncode == 1
        assert "refused" in result.stderr and "goog.json" in result.stderr
        assert "nothing changed" in result.stderr
        assert (state / "current").resolve() == current
        assert "Traceback" not in result.stderr

    def test_missing_folder(self, tmp_path: Path) -> None:
        """--from a folder that does not exist is a usage error."""
        result = douane("update-db", "--state-dir", str(tmp_path / "s"), "--from", str(tmp_path / "nope"))
        assert result.returncode == 2 and "not a folder" in result.stderr


class TestCheck:
    def test_defaults_pass(self) -> None:
        """check with the embedded databases and no file exits 0."""
        result = douane("check")
        assert result.returncode == 0, result.stderr
        assert "configuration valid" in result.stdout

    def test_missing_database_fails(self, tmp_path: Path) -> None:
        """A configured database that does not exist makes check exit 1, naming the file."""
        config = tmp_path / "douane.yaml"
        missing = tmp_path / "nowhere.mmdb"
        config.write_text(f"geo:\n  country_db: {missing}\n")
        result = douane("check", "--config", str(config))
        assert result.returncode == 1
        assert str(missing) in result.stderr
        assert "Traceback" not in result.stderr

    def test_bad_config_fails(self, tmp_path: Path) -> None:
        """A bad configuration makes every command exit 2 with file, key and expectation."""
        config = tmp_path / "douane.yaml"
        config.write_text("flows:\n  idle_timeout: soon\n")
        for args in (("check", "-c", str(config)), ("replay", str(demo_capture()), "-c", str(config))):
            result = douane(*args)
            assert result.returncode == 2
            assert f"{config}: key 'flows.idle_timeout': expected a positive number" in result.stderr


class TestVersionAndErrors:
    def test_version(self) -> None:
        """version prints the version, each database's build date and the CC BY attribution."""
        result = douane("version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("douane ")
        assert "DB-IP" in result.stdout and "RouteViews" in result.stdout
        assert "CC BY 4.0" in result.stdout or "Creative Commons" in result.stdout
        assert result.stdout.count("built 20") >= 2

    def test_missing_capture(self, tmp_path: Path) -> None:
        """Replaying a file that does not exist exits 2 with a one-line message."""
        result = douane("replay", str(tmp_path / "nope.pcap"))
        assert result.returncode == 2
        assert "nope.pcap" in result.stderr and "Traceback" not in result.stderr

    def test_help_on_each_command(self) -> None:
        """Every subcommand answers --help."""
        for command in ("replay", "demo", "lookup", "check", "version"):
            result = douane(command, "--help")
            assert result.returncode == 0
            assert "usage: douane" in result.stdout


class TestRunSources:
    """`douane run` refuses, before capturing anything, a configuration that gives it no flows."""

    @pytest.mark.parametrize(("text", "message"), [
        ("exporter:\n  listen: 127.0.0.1:9742\n",
         "key 'capture': expected capture.interface (the interfaces to capture on), "
         "capture.collector (NetFlow/IPFIX from exporters), or both"),
        ("capture:\n  collector:\n    listen: 127.0.0.1:2055\n",
         "key 'capture.collector.exporters': expected the addresses of the exporters to accept"),
        ("capture:\n  interface: eth1\n  workers: 2\n  collector:\n    exporters: [192.0.2.1]\n",
         "key 'capture.workers': expected 1 when capture.collector is set"),
    ], ids=["no-source", "no-exporters", "workers-and-collector"])
    def test_refused(self, tmp_path: Path, text: str, message: str) -> None:
        """No interface and no collector, a collector accepting no exporter, or workers beside a
        collector: exit 2 with the file, the key and the expectation."""
        config = tmp_path / "douane.yaml"
        config.write_text(text, encoding="utf-8")
        result = douane("run", "-c", str(config))
        assert result.returncode == 2
        assert f"{config}: {message}" in result.stderr
        assert "Traceback" not in result.stderr

    def test_collector_port_in_use(self, tmp_path: Path) -> None:
        """A collector that cannot bind its port: exit 2 naming the address, nothing left running."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            config = tmp_path / "douane.yaml"
            config.write_text(f"capture:\n  collector:\n    listen: 127.0.0.1:{port}\n"
                              "    exporters: [127.0.0.1]\n", encoding="utf-8")
            result = douane("run", "-c", str(config))
        assert result.returncode == 2
        assert f"douane run: collector on 127.0.0.1:{port}: Address already in use" in result.stderr
        assert "Traceback" not in result.stderr
