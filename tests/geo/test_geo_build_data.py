"""geo/build_data.py and the embedded data it produced."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyasn
import pytest

from douane.geo import build_data, embedded
from douane.geo.asn import AsnDatabase

MAX_COMMITTED_BYTES = 5 * 1024 * 1024


class TestEmbeddedFiles:
    def test_build_manifest_matches_files(self) -> None:
        """BUILD.json's sha256 and size match each committed data file."""
        manifest = json.loads(embedded.BUILD_FILE.read_text(encoding="utf-8"))
        files = {entry["file"]: entry for entry in manifest["databases"]}
        assert set(files) == {"country.mmdb.gz", "asn.table.gz", "asnames.json.gz"}
        for name, entry in files.items():
            data = (embedded.DATA_DIR / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
            assert len(data) == entry["bytes"]

    def test_manifest_provenance(self) -> None:
        """Each entry names its package, version, URL, licence, attribution and data date."""
        manifest = json.loads(embedded.BUILD_FILE.read_text(encoding="utf-8"))
        for entry in manifest["databases"]:
            assert entry["source_package"].startswith("@ip-location-db/")
            assert entry["source_url"].startswith("https://registry.npmjs.org/")
            assert entry["licence"] == "CC BY 4.0"
            assert "DB-IP" in entry["attribution"]
            assert datetime.fromisoformat(entry["build_time"]).tzinfo is not None

    @pytest.mark.parametrize("name", ["country.mmdb.gz", "asn.table.gz", "asnames.json.gz"])
    def test_size_limit(self, name: str) -> None:
        """No committed data file exceeds 5 MB."""
        assert (embedded.DATA_DIR / name).stat().st_size <= MAX_COMMITTED_BYTES


class TestVersionDate:
    def test_ip_location_db_version(self) -> None:
        """An ip-location-db version ends with the data's build hour (UTC)."""
        assert build_data.version_date("2.3.2026061719") == datetime(2026, 6, 17, 19, tzinfo=UTC)

    @pytest.mark.parametrize("version", ["1.0.0", "2.3.2026139919", ""])
    def test_other_versions(self, version: str) -> None:
        """A version without a valid date gives None."""
        assert build_data.version_date(version) is None


class TestConvertAsn:
    def test_ranges_to_prefixes(self, tmp_path: Path) -> None:
        """Inclusive ranges become CIDR prefixes; ASN 0 is left out; names are collected."""
        v4 = tmp_path / "asn-ipv4.csv"
        v4.write_text(
            '1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc."\n'
            "1.0.4.0,1.0.6.255,38803,Gtelecom\n"  # not a power of two: two prefixes
            "1.0.8.0,1.0.8.255,0,Not routed\n",
            encoding="utf-8",
        )
        v6 = tmp_path / "asn-ipv6.csv"
        v6.write_text("2001:200::,2001:200:ffff:ffff:ffff:ffff:ffff:ffff,2500,WIDE\n")
        prefixes, names, overlaps = build_data.convert_asn([v4, v6])
        assert prefixes == {
            "1.0.0.0/24": 13335,
            "1.0.4.0/23": 38803,
            "1.0.6.0/24": 38803,
            "2001:200::/32": 2500,
        }
        assert names == {"13335": "Cloudflare, Inc.", "38803": "Gtelecom", "2500": "WIDE"}
        assert overlaps == 0

    def test_overlap_later_row_wins(self, tmp_path: Path) -> None:
        """Overlapping ranges are counted, and a shared prefix keeps the later (more specific) row."""
        v4 = tmp_path / "asn-ipv4.csv"
        v4.write_text("214.0.0.0,215.0.255.255,749,DoD\n215.0.0.0,215.0.255.255,721,NIC\n")
        prefixes, _names, overlaps = build_data.convert_asn([v4])
        assert overlaps == 1 and prefixes["215.0.0.0/16"] == 721

    def test_bad_row(self, tmp_path: Path) -> None:
        """A row without four fields stops the build with the file and line."""
        v4 = tmp_path / "asn-ipv4.csv"
        v4.write_text("1.0.0.0,1.0.0.255,13335\n")
        with pytest.raises(ValueError, match=r"asn-ipv4\.csv:1"):
            build_data.convert_asn([v4])

    def test_ipasn_text_loads_in_pyasn(self) -> None:
        """The IPASN text has pyasn's header and loads in pyasn with the same answers."""
        text = build_data.ipasn_text({"1.0.0.0/24": 13335, "2001:200::/32": 2500}, "test")
        assert text.startswith(b"; IP-ASN32-DAT file\n; Original source: test\n")
        index = pyasn.pyasn(None, ipasn_string=text.decode("ascii"))
        assert index.lookup("1.0.0.1") == (13335, "1.0.0.0/24")
        assert index.lookup("2001:200::1") == (2500, "2001:200::/32")

    def test_gzip_reproducible(self) -> None:
        """Compressing the same bytes twice gives identical files (no time stamp inside)."""
        assert build_data.gzip_bytes(b"x" * 100) == build_data.gzip_bytes(b"x" * 100)


def _packages(source: Path, make_mmdb: Callable[..., bytes]) -> Path:
    """The two npm packages, unpacked, with one network each."""
    country = source / "cc" / "package"
    asn = source / "asn" / "package"
    country.mkdir(parents=True)
    asn.mkdir(parents=True)
    (country / "package.json").write_text(
        json.dumps({"name": build_data.COUNTRY_PACKAGE, "version": "2.3.2026060120"})
    )
    (country / "dbip-country.mmdb").write_bytes(
        make_mmdb({"8.8.8.0/24": {"country_code": "US"}}, build_epoch=1_780_000_000)
    )
    (asn / "package.json").write_text(
        json.dumps({"name": build_data.ASN_PACKAGE, "version": "2.3.2026061719"})
    )
    (asn / "asn-ipv4.csv").write_text("8.8.8.0,8.8.8.255,15169,Google LLC\n")
    (asn / "asn-ipv6.csv").write_text("2a01:4f8::,2a01:4f9:ffff:ffff:ffff:ffff:ffff:ffff,24940,Hetzner\n")
    return source


class TestBuild:
    def test_build_from_folder(self, tmp_path: Path, make_mmdb: Callable[..., bytes]) -> None:
        """build_data --from DIR writes the three files and a BUILD.json describing them."""
        source = _packages(tmp_path / "src", make_mmdb)
        country = source / "cc" / "package"
        out = tmp_path / "out"
        assert build_data.main(["--from", str(source), "--out", str(out)]) == 0

        manifest = json.loads((out / "BUILD.json").read_text())
        entries = {entry["name"]: entry for entry in manifest["databases"]}
        assert entries["country"]["build_time"] == "2026-05-28T20:26:40Z"
        assert entries["asn"]["build_time"] == "2026-06-17T19:00:00Z"
        assert entries["asn"]["prefixes"] == 2
        assert (
            gzip.decompress((out / "country.mmdb.gz").read_bytes())
            == (country / "dbip-country.mmdb").read_bytes()
        )
        names = json.loads(gzip.decompress((out / "asnames.json.gz").read_bytes()))
        assert names == {"15169": "Google LLC", "24940": "Hetzner"}
        database = AsnDatabase.open(out / "asn.table.gz")
        assert (database.lookup("8.8.8.8"), database.lookup("8.8.9.0")) == (15169, None)
        assert database.lookup("2a01:4f9:ffff::1") == 24940 and database.lookup("2a01:4fa::") is None
        assert not (out / "ipasn.dat.gz").exists()

    def test_ipasn_out(self, tmp_path: Path, make_mmdb: Callable[..., bytes]) -> None:
        """--ipasn-out keeps the IPASN text the table was compiled from, and BUILD.json its sha256."""
        source = _packages(tmp_path / "src", make_mmdb)
        out, text = tmp_path / "out", tmp_path / "ipasn.dat.gz"
        assert build_data.main(["--from", str(source), "--out", str(out), "--ipasn-out", str(text)]) == 0
        ipasn = gzip.decompress(text.read_bytes())
        assert b"8.8.8.0/24\t15169\n" in ipasn and b"2a01:4f8::/31\t24940\n" in ipasn
        manifest = json.loads((out / "BUILD.json").read_text())
        (entry,) = [entry for entry in manifest["databases"] if entry["name"] == "asn"]
        assert entry["compiled_from_ipasn_sha256"] == hashlib.sha256(ipasn).hexdigest()

    def test_recompile_from_ipasn(self, tmp_path: Path, make_mmdb: Callable[..., bytes]) -> None:
        """--from-ipasn recompiles the table alone, keeps the provenance and drops an old text file."""
        out = tmp_path / "out"
        source = _packages(tmp_path / "src", make_mmdb)
        assert build_data.main(["--from", str(source), "--out", str(out)]) == 0
        before = json.loads((out / "BUILD.json").read_text())
        (out / "ipasn.dat.gz").write_bytes(b"an old embedded text file")
        entry = next(entry for entry in before["databases"] if entry["name"] == "asn")
        entry.update(file="ipasn.dat.gz", format="pyasn IPASN (gzip)")
        (out / "BUILD.json").write_text(json.dumps(before))
        text = tmp_path / "ipasn.dat"
        text.write_bytes(build_data.ipasn_text({"9.9.9.0/24": 19281}, "ignored"))
        assert build_data.main(["--from-ipasn", str(text), "--out", str(out)]) == 0
        after = json.loads((out / "BUILD.json").read_text())
        (fresh,) = [entry for entry in after["databases"] if entry["name"] == "asn"]
        assert fresh["file"] == "asn.table.gz" and fresh["prefixes"] == 1
        assert fresh["source_version"] == "2.3.2026061719" and fresh["build_time"] == entry["build_time"]
        assert not (out / "ipasn.dat.gz").exists()
        assert AsnDatabase.open(out / "asn.table.gz").lookup("9.9.9.9") == 19281

    def test_missing_package(self, tmp_path: Path) -> None:
        """A folder without the packages is refused with a non-zero status."""
        assert build_data.main(["--from", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
