"""douane.geo.ranges: published cloud range files, the compiled range table, the regions table."""

from __future__ import annotations

import gzip
import shutil
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from douane.geo.ranges import (
    CloudRange,
    RangeError,
    RangeTable,
    RegionsError,
    default_regions,
    load_range_file,
    load_ranges_dir,
    load_regions,
)

FIXTURES = Path(__file__).parent / "data" / "ranges"


def cloud(network: str, provider: str = "amazon", region: str | None = None,
          service: str | None = None) -> CloudRange:
    return CloudRange(ip_network(network, strict=False), provider, region, service, "test")


class TestLoadRangeFile:
    @pytest.mark.parametrize(
        ("name", "kind", "provider", "count"),
        [
            ("ip-ranges.json", "aws", "amazon", 7),
            ("ServiceTags_Public_20261123.json", "azure", "microsoft", 7),
            ("cloud.json", "google", "google", 3),
            ("goog.json", "google", "google", 4),
            ("public_ip_ranges.json", "oracle", "oracle", 3),
            ("ips-v4", "cloudflare", "cloudflare", 5),
            ("ips-v6", "cloudflare", "cloudflare", 3),
        ],
    )
    def test_formats(self, name: str, kind: str, provider: str, count: int) -> None:
        """Each published format is recognised and read whole, with its provider."""
        info, ranges = load_range_file(FIXTURES / name)
        assert (info.format, info.provider, info.ranges, info.error) == (kind, provider, count, None)
        assert all(r.provider == provider for r in ranges)

    def test_aws_fields(self) -> None:
        """AWS: region kept, GLOBAL and the catch-all AMAZON service dropped."""
        _, ranges = load_range_file(FIXTURES / "ip-ranges.json")
        by_net = {(str(r.network), r.service): r for r in ranges}
        assert by_net[("35.180.0.0/16", "EC2")].region == "eu-west-3"
        assert by_net[("35.180.0.0/16", None)].region == "eu-west-3"
        assert by_net[("13.32.0.0/15", "CLOUDFRONT")].region is None

    def test_azure_and_oracle_fields(self) -> None:
        """Azure: region and systemService; Oracle: region and tags."""
        _, azure = load_range_file(FIXTURES / "ServiceTags_Public_20261123.json")
        storage = next(r for r in azure if str(r.network) == "20.199.120.0/24")
        assert (storage.region, storage.service) == ("francecentral", "AzureStorage")
        _, oracle = load_range_file(FIXTURES / "public_ip_ranges.json")
        osn = next(r for r in oracle if str(r.network) == "134.70.128.0/19")
        assert (osn.region, osn.service) == ("eu-paris-1", "OSN,OBJECT_STORAGE")

    def test_gzip_accepted(self, tmp_path: Path) -> None:
        """A gzip-compressed file reads like the plain one."""
        target = tmp_path / "ip-ranges.json.gz"
        target.write_bytes(gzip.compress((FIXTURES / "ip-ranges.json").read_bytes()))
        info, _ = load_range_file(target)
        assert info.format == "aws" and info.ranges == 7

    @pytest.mark.parametrize(
        ("name", "content", "message"),
        [
            ("ip-ranges.json", b'{"createDate": "x", "prefixes": [{"ip_prefix": "35.180.0.0/33"}]}',
             "not an IP prefix"),
            ("ip-ranges.json", b'{"createDate": "x", "prefixes": [', "not valid JSON"),
            ("other.json", b'{"hello": 1}', "no known range format"),
            ("ips-v4", b"104.16.0.0/13\nnot a prefix\n", "line 2: not an IP prefix"),
            ("ips-v4", b"", "holds no prefix"),
            ("cloud.json", b'{"creationTime": "x", "prefixes": [{"service": "Google Cloud"}]}',
             "expected ipv4Prefix or ipv6Prefix"),
        ],
    )
    def test_corrupt_refused(self, tmp_path: Path, name: str, content: bytes, message: str) -> None:
        """A corrupt file raises RangeError and nothing of it is used."""
        target = tmp_path / name
        target.write_bytes(content)
        with pytest.raises(RangeError, match=message):
            load_range_file(target)


class TestLoadRangesDir:
    def test_folder(self, tmp_path: Path) -> None:
        """Every range file of a folder loads; a bad one is reported and the others still count."""
        for path in FIXTURES.iterdir():
            shutil.copy(path, tmp_path / path.name)
        (tmp_path / "broken.json").write_text("{")
        (tmp_path / "README").write_text("not a range file, not read")
        files, ranges = load_ranges_dir(tmp_path)
        assert len(files) == 8 and len(ranges) == 32
        bad = [f for f in files if f.error]
        assert len(bad) == 1 and bad[0].path.endswith("broken.json")

    def test_missing_folder(self, tmp_path: Path) -> None:
        """A missing folder is one reported problem, not an exception."""
        files, ranges = load_ranges_dir(tmp_path / "absent")
        assert ranges == [] and files[0].error is not None


class TestRangeTable:
    def test_longest_prefix_wins(self) -> None:
        """Nested prefixes: the innermost holding the address answers, its parent around it."""
        table = RangeTable([
            cloud("20.0.0.0/11", "microsoft"),
            cloud("20.19.0.0/16", "microsoft", "francecentral"),
            cloud("20.19.4.0/24", "microsoft", "francecentral", "AzureStorage"),
            cloud("20.40.0.0/13", "microsoft", "westeurope"),
        ])
        region = {a: getattr(table.lookup(ip_address(a)), "region", "none")
                  for a in ("20.0.0.1", "20.19.3.255", "20.19.4.9", "20.19.5.0", "20.31.255.255",
                            "20.40.0.1", "20.48.0.0", "19.255.255.255")}
        assert region == {
            "20.0.0.1": None, "20.19.3.255": "francecentral", "20.19.4.9": "francecentral",
            "20.19.5.0": "francecentral", "20.31.255.255": None, "20.40.0.1": "westeurope",
            "20.48.0.0": "none", "19.255.255.255": "none",
        }
        found = table.lookup(ip_address("20.19.4.9"))
        assert found is not None and found.service == "AzureStorage"

    def test_same_prefix_most_specific_entry(self) -> None:
        """The same prefix in several entries: the one with a region and a service wins."""
        table = RangeTable([cloud("35.180.0.0/16", region="eu-west-3"),
                            cloud("35.180.0.0/16", region="eu-west-3", service="EC2"),
                            cloud("35.180.0.0/16")])
        found = table.lookup(ip_address("35.180.1.1"))
        assert found is not None and found.service == "EC2"
        assert len(table) == 1

    def test_families_apart(self) -> None:
        """IPv4 and IPv6 are looked up in their own tables; ::/0 does not hold 0.0.0.1."""
        table = RangeTable([cloud("2606:4700::/32", "cloudflare"), cloud("104.16.0.0/13", "cloudflare")])
        assert table.lookup(ip_address("2606:4700::6810:84e5")) is not None
        assert table.lookup(ip_address("104.23.255.255")) is not None
        assert table.lookup(ip_address("0.0.0.1")) is None
        assert RangeTable().lookup(ip_address("8.8.8.8")) is None

    def test_against_linear_scan(self) -> None:
        """On many overlapping random prefixes, the table agrees with a brute-force longest match."""
        import random

        rng = random.Random(7)
        ranges = [cloud(f"{rng.randrange(256)}.{rng.randrange(256)}.0.0/{rng.choice([8, 12, 16, 20, 24])}",
                        region=str(index)) for index in range(300)]
        table = RangeTable(ranges)
        for _ in range(2000):
            address = ip_address(rng.getrandbits(32))
            holders = [r for r in ranges if address in r.network]
            found = table.lookup(address)
            if not holders:
                assert found is None
            else:
                best = max(holders, key=lambda r: r.network.prefixlen)
                assert found is not None and found.network == best.network


class TestRegions:
    @pytest.mark.parametrize(
        ("provider", "region", "country"),
        [("microsoft", "francecentral", "FR"), ("amazon", "eu-west-3", "FR"),
         ("google", "europe-west9", "FR"), ("oracle", "eu-paris-1", "FR"),
         ("microsoft", "norwayeast", "NO"), ("amazon", "us-east-1", "US"),
         ("microsoft", "FranceCentral", "FR")],
    )
    def test_known_regions(self, provider: str, region: str, country: str) -> None:
        """A provider's region gives the country of its data centres."""
        assert default_regions().country(provider, region) == country

    def test_unknown_region(self) -> None:
        """An unknown region or None gives None (the country database keeps its answer)."""
        assert default_regions().country("amazon", "mars-north-1") is None
        assert default_regions().country("amazon", None) is None

    def test_bad_table_refused(self, tmp_path: Path) -> None:
        """A code that is not ISO alpha-2, or a source that is not a URL, is refused."""
        bad = tmp_path / "regions.yaml"
        bad.write_text("version: 1\namazon:\n  source: https://x.example\n  regions: {eu-west-3: FRA}\n")
        with pytest.raises(RegionsError, match="eu-west-3: expected an ISO"):
            load_regions(bad)
        bad.write_text("version: 1\namazon:\n  source: docs\n  regions: {eu-west-3: FR}\n")
        with pytest.raises(RegionsError, match="source: expected an https"):
            load_regions(bad)
