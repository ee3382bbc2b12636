"""douane.geo.update and douane.geo.state: verified, atomic updates of the geo data."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import pytest

from douane.geo import asn_table
from douane.geo.state import current_generation, load_geo, resolve_files
from douane.geo.update import Limits, classify, update_from

FIXTURES = Path(__file__).parent / "data" / "ranges"
SMALL = Limits(country_min_bytes=0, asn_min_prefixes=0, names_min=0)


def offer(folder: Path, small_files: dict[str, Any], *, ranges: bool = True) -> Path:
    """A folder as a sysadmin would fill it: the three databases and the range files."""
    folder.mkdir(exist_ok=True)
    shutil.copy(small_files["country_db"], folder / "dbip-country-lite-2026-11.mmdb")
    shutil.copy(small_files["asn_db"], folder / "ipasn_20261128.dat")
    shutil.copy(small_files["as_names"], folder / "asnames.json")
    if ranges:
        for path in FIXTURES.iterdir():
            shutil.copy(path, folder / path.name)
    return folder


class TestClassify:
    @pytest.mark.parametrize(
        ("name", "kind"),
        [("dbip-country-lite-2026-11.mmdb.gz", "country"), ("GeoLite2-Country.mmdb", "country"),
         ("ipasn_20261128.dat.gz", "asn"), ("asn.table.gz", "asn"), ("asnames.json", "as_names"),
         ("asn-ipv4.csv", "asn_csv"),
         ("ip-ranges.json", "range"), ("ips-v6", "range"), ("notes.txt", None)],
    )
    def test_names(self, tmp_path: Path, name: str, kind: str | None) -> None:
        """Files are recognised by the names their publishers give them."""
        path = tmp_path / name
        path.write_bytes(b"x")
        assert classify(path) == kind


class TestUpdateFrom:
    def test_installs_and_loader_prefers_state(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """A verified folder becomes `current`, and the loader uses it instead of the embedded data."""
        state = tmp_path / "state"
        report = update_from(offer(tmp_path / "in", small_files), state, SMALL)
        assert report.ok, report.refused
        assert current_generation(state) == report.generation
        files = resolve_files(None, None, None, None, state)
        assert files.country_db is not None and files.country_db.parent == report.generation
        assert files.ranges_dir == report.generation / "ranges"
        loaded = load_geo(files)
        try:
            answer = loaded.geo.lookup("8.8.8.8")
            assert (answer.asn, answer.location_country) == (15169, "US")
            assert len(loaded.jurisdictions.range_files) == 7
            # The small ASN file does not know Azure's addresses: the range file still does.
            found = loaded.jurisdictions.determine("20.199.120.7", None, None)
            assert (found.provider, found.location_country, found.jurisdiction) == ("microsoft", "FR", "us")
        finally:
            loaded.geo.stop()

    def test_configured_file_wins_over_state(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """An explicitly configured file is used even when the state directory has one."""
        state = tmp_path / "state"
        update_from(offer(tmp_path / "in", small_files), state, SMALL)
        mine = tmp_path / "mine.mmdb"
        files = resolve_files(mine, None, None, None, state)
        assert files.country_db == mine and files.asn_db is not None

    def test_corrupt_file_refused_old_data_kept(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """One corrupt file refuses the whole update; `current` and its files do not change."""
        state = tmp_path / "state"
        first = update_from(offer(tmp_path / "in", small_files), state, SMALL)
        before = sorted(p.name for p in first.generation.rglob("*")) if first.generation else []
        bad = offer(tmp_path / "bad", small_files)
        (bad / "ipasn_20261128.dat").write_text("this is not an IPASN file\n")
        report = update_from(bad, state, SMALL)
        assert not report.ok and any("ipasn_20261128.dat" in r for r in report.refused)
        assert current_generation(state) == first.generation
        assert sorted(p.name for p in current_generation(state).rglob("*")) == before  # type: ignore[union-attr]
        assert not [p for p in state.iterdir() if p.name.startswith(".incoming")]

    def test_corrupt_range_file_refused(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """A truncated range file refuses the update too."""
        bad = offer(tmp_path / "in", small_files)
        (bad / "ip-ranges.json").write_text('{"createDate": "x", "prefixes": [')
        report = update_from(bad, tmp_path / "state", SMALL)
        assert not report.ok and current_generation(tmp_path / "state") is None

    def test_sanity_probes_and_bounds(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """The real-data bounds refuse a tiny database; a probe answering wrong is refused too."""
        report = update_from(offer(tmp_path / "in", small_files, ranges=False), tmp_path / "state")
        assert not report.ok and any("expected of a country database" in r for r in report.refused)
        wrong = offer(tmp_path / "wrong", small_files, ranges=False)
        (wrong / "ipasn_20261128.dat").write_text("; IP-ASN32-DAT file\n8.8.8.0/24\t64500\n")
        report = update_from(wrong, tmp_path / "state", SMALL)
        assert any("expected AS15169" in r for r in report.refused)

    def test_partial_update_carries_the_rest(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """Offering only a newer AWS file keeps the databases and the other range files."""
        state = tmp_path / "state"
        update_from(offer(tmp_path / "in", small_files), state, SMALL)
        newer = tmp_path / "newer"
        newer.mkdir()
        (newer / "ip-ranges.json").write_text(
            '{"createDate": "2026-12-01-00-00-00", "prefixes": [{"ip_prefix": "3.5.0.0/16", '
            '"region": "eu-west-3", "service": "S3"}], "ipv6_prefixes": []}')
        report = update_from(newer, state, SMALL)
        assert report.ok, report.refused
        generation = current_generation(state)
        assert generation is not None
        names = sorted(p.name for p in (generation / "ranges").iterdir())
        assert len(names) == 7 and "ip-ranges.json" in names
        assert "3.5.0.0/16" in (generation / "ranges" / "ip-ranges.json").read_text()
        assert {p.name for p in generation.iterdir()} >= {"country.mmdb", "asn.table", "asnames.json"}

    def test_generations_pruned(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """Only the current generation and the one before it are kept."""
        state = tmp_path / "state"
        source = offer(tmp_path / "in", small_files, ranges=False)
        for _ in range(4):
            assert update_from(source, state, SMALL).ok
        assert len([p for p in state.iterdir() if p.name.startswith("gen-")]) == 2

    def test_ip_location_db_csv(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """ip-location-db's ASN CSVs are converted into IPASN and AS names, then verified."""
        source = tmp_path / "in"
        source.mkdir()
        shutil.copy(small_files["country_db"], source / "country.mmdb")
        (source / "asn-ipv4.csv").write_text('8.8.8.0,8.8.8.255,15169,"Google LLC"\n'
                                            '51.178.0.0,51.178.255.255,16276,"OVH SAS"\n')
        (source / "asn-ipv6.csv").write_text('2a01:4f8::,2a01:4f8:ffff:ffff:ffff:ffff:ffff:ffff,24940,'
                                            '"Hetzner Online GmbH"\n')
        report = update_from(source, tmp_path / "state", SMALL)
        assert report.ok, report.refused
        files = resolve_files(None, None, None, None, tmp_path / "state")
        assert files.asn_db is not None and files.as_names is not None

    def test_empty_folder_refused(self, tmp_path: Path) -> None:
        """A folder with nothing douane uses is refused and nothing is created."""
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "README").write_text("hello")
        report = update_from(tmp_path / "in", tmp_path / "state", SMALL)
        assert not report.ok and report.ignored and not (tmp_path / "state").exists()


def old_state(state: Path, small_files: dict[str, Any]) -> Path:
    """A state directory as douane wrote it before the compiled table: IPASN text, gzip."""
    generation = state / "gen-20260101T000000Z-0a0b"
    generation.mkdir(parents=True)
    shutil.copy(small_files["country_db"], generation / "country.mmdb")
    (generation / "ipasn.dat.gz").write_bytes(gzip.compress(small_files["asn_db"].read_bytes()))
    shutil.copy(small_files["as_names"], generation / "asnames.json")
    (state / "current").symlink_to(generation.name)
    return generation


def lookup_asn(state: Path, address: str) -> int | None:
    loaded = load_geo(resolve_files(None, None, None, None, state))
    try:
        return loaded.geo.lookup(address).asn
    finally:
        loaded.geo.stop()


class TestCompiledAsnTable:
    def test_text_stored_compiled(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """An IPASN text offered to update-db is verified, then stored as the compiled table."""
        report = update_from(offer(tmp_path / "in", small_files, ranges=False), tmp_path / "state", SMALL)
        assert report.ok, report.refused
        assert report.generation is not None
        table = report.generation / "asn.table"
        assert table.read_bytes().startswith(asn_table.MAGIC)
        assert not list(report.generation.glob("ipasn*"))
        assert any(line.startswith("asn: ASN table, 3 prefixes in ") for line in report.installed)
        assert resolve_files(None, None, None, None, tmp_path / "state").asn_db == table
        assert lookup_asn(tmp_path / "state", "2a01:4f8::1") == 24940

    def test_table_offered(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """A compiled table (gzip) offered as is is taken, and stored uncompressed."""
        source = tmp_path / "in"
        source.mkdir()
        first = update_from(offer(tmp_path / "first", small_files, ranges=False), tmp_path / "a", SMALL)
        assert first.generation is not None
        (source / "asn.table.gz").write_bytes(gzip.compress((first.generation / "asn.table").read_bytes()))
        report = update_from(source, tmp_path / "state", SMALL)
        assert report.ok, report.refused
        assert report.generation is not None
        assert (report.generation / "asn.table").read_bytes() == (first.generation / "asn.table").read_bytes()

    def test_corrupt_table_refused(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """A table file cut short is refused with the reason, and nothing is installed."""
        source = offer(tmp_path / "in", small_files, ranges=False)
        (source / "ipasn_20261128.dat").unlink()
        (source / "asn.table").write_bytes(asn_table.MAGIC + bytes(10))
        report = update_from(source, tmp_path / "state", SMALL)
        assert not report.ok and current_generation(tmp_path / "state") is None
        assert any("asn.table: truncated douane ASN table" in line for line in report.refused)

    def test_old_text_generation_loads(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """A generation written by an older douane (ipasn.dat.gz) is still found and read."""
        generation = old_state(tmp_path / "state", small_files)
        files = resolve_files(None, None, None, None, tmp_path / "state")
        assert files.asn_db == generation / "ipasn.dat.gz"
        assert lookup_asn(tmp_path / "state", "51.178.0.1") == 16276

    def test_old_text_compiled_when_carried_over(self, tmp_path: Path, small_files: dict[str, Any]) -> None:
        """An update that does not replace the old IPASN text carries it over compiled."""
        old_state(tmp_path / "state", small_files)
        ranges = tmp_path / "ranges"
        ranges.mkdir()
        shutil.copy(FIXTURES / "ips-v4", ranges / "ips-v4")
        report = update_from(ranges, tmp_path / "state", SMALL)
        assert report.ok, report.refused
        assert report.generation is not None
        assert sorted(p.name for p in report.generation.iterdir() if p.is_file()) == [
            "MANIFEST.json", "asn.table", "asnames.json", "country.mmdb"]
        assert lookup_asn(tmp_path / "state", "8.8.8.8") == 15169
