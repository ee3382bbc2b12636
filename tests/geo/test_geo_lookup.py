"""douane.geo.lookup: answers from the embedded data, configured files, and broken files."""

from __future__ import annotations

import dataclasses
import gzip
import ipaddress
import json
import lzma
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from douane.geo import (
    ATTRIBUTION,
    UNKNOWN_ANSWER,
    DatabaseInfo,
    GeoAnswer,
    GeoConfig,
    GeoDatabases,
    check_database_files,
    embedded,
)
from douane.geo.country import CountryDatabase
from douane.geo.lookup import SPECIAL_BLOCKS, plainly_global

Factory = Callable[..., GeoDatabases]
Writer = Callable[..., bytes]

PRIVATE = [
    "10.1.2.3",  # RFC 1918
    "172.16.0.1",  # RFC 1918
    "192.168.1.1",  # RFC 1918
    "127.0.0.1",  # loopback
    "169.254.10.1",  # link-local
    "100.64.0.1",  # RFC 6598 shared address space (CGNAT)
    "::1",  # loopback
    "fe80::1",  # link-local
    "fe80::1%eth0",  # link-local with a scope id
    "fd12:3456::1",  # RFC 4193 unique local
    "::ffff:192.168.1.1",  # IPv4-mapped private
    "224.0.0.251",  # multicast (mDNS)
    "0.0.0.0",  # unspecified
]


def _config_for(files: dict[str, Any], **changes: Path) -> dict[str, Any]:
    return {**files, **changes}


class TestGeoConfig:
    def test_defaults(self) -> None:
        """Every field defaults to the embedded data and a 65536-address cache."""
        config = GeoConfig()
        assert (config.country_db, config.asn_db, config.as_names) == (None, None, None)
        assert config.cache_size == 65536

    def test_negative_cache_size_refused(self) -> None:
        """A negative cache size is refused with the field named."""
        with pytest.raises(ValueError, match="cache_size"):
            GeoConfig(cache_size=-1)

    def test_frozen(self) -> None:
        """The configuration cannot be changed after it is built."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            GeoConfig().cache_size = 1  # type: ignore[misc]


class TestGeoAnswer:
    def test_unknown_answer(self) -> None:
        """The all-unknown answer has no ASN, no name, no country and the `unknown` zone."""
        assert GeoAnswer(None, None, None, "unknown") == UNKNOWN_ANSWER


class TestEmbeddedData:
    """Stable facts of the embedded databases (the networks' owners and countries do not move)."""

    @pytest.mark.parametrize(
        ("address", "asn", "name_part", "country", "zone"),
        [
            ("8.8.8.8", 15169, "Google", "US", "third"),
            ("2a01:4f8::1", 24940, "Hetzner", "DE", "eea"),
            ("51.178.0.1", 16276, "OVH", "FR", "eea"),
        ],
    )
    def test_known_addresses(
        self,
        embedded_geo: GeoDatabases,
        address: str,
        asn: int,
        name_part: str,
        country: str,
        zone: str,
    ) -> None:
        """A well-known address gets its AS number, AS name, country and zone."""
        answer = embedded_geo.lookup(address)
        assert answer.asn == asn
        assert answer.as_name is not None and name_part in answer.as_name
        assert answer.location_country == country
        assert answer.location_zone == zone

    def test_ipv4_mapped(self, embedded_geo: GeoDatabases) -> None:
        """An IPv4-mapped IPv6 address answers like the IPv4 address it carries."""
        assert embedded_geo.lookup("::ffff:8.8.8.8") == embedded_geo.lookup("8.8.8.8")
        assert embedded_geo.lookup("::FFFF:51.178.0.1").location_country == "FR"

    @pytest.mark.parametrize("address", PRIVATE)
    def test_private_addresses_unknown(self, embedded_geo: GeoDatabases, address: str) -> None:
        """A private, loopback, link-local, ULA or multicast address is all unknown."""
        assert embedded_geo.lookup(address) == UNKNOWN_ANSWER

    @pytest.mark.parametrize("address", ["", "example.org", "8.8.8", "1.2.3.4.5", "::g", "8.8.8.8 "])
    def test_invalid_text_unknown(self, embedded_geo: GeoDatabases, address: str) -> None:
        """Text that is not an address gives the all-unknown answer, without an exception."""
        assert embedded_geo.lookup(address) == UNKNOWN_ANSWER

    def test_packed_address(self, embedded_geo: GeoDatabases) -> None:
        """Packed bytes, which ipaddress accepts, answer like the text form."""
        packed = b"\x08\x08\x08\x08"
        assert embedded_geo.lookup(packed) == embedded_geo.lookup("8.8.8.8")  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [None, 42, 3.5, ["8.8.8.8"], {"a": 1}])
    def test_wrong_type_unknown(self, embedded_geo: GeoDatabases, value: object) -> None:
        """A value that is not a string (even an unhashable one) gives the all-unknown answer."""
        assert embedded_geo.lookup(value) == UNKNOWN_ANSWER  # type: ignore[arg-type]

    def test_build_metadata(self, embedded_geo: GeoDatabases) -> None:
        """Each embedded database reports its source, CC BY 4.0 licence, attribution and date."""
        infos = {info.name: info for info in embedded_geo.databases()}
        assert set(infos) == {"country", "asn", "as_names"}
        for info in infos.values():
            assert info.error is None
            assert info.build_time is not None and info.build_time.tzinfo is not None
            assert info.licence == "CC BY 4.0"
            assert info.source.startswith("@ip-location-db/")
        assert "DB-IP" in infos["country"].attribution
        assert "RouteViews" in infos["asn"].attribution and "NRO" in infos["asn"].attribution

    def test_no_problems(self, embedded_geo: GeoDatabases) -> None:
        """The embedded databases load without problems."""
        assert embedded_geo.problems() == []

    def test_started_quickly_enough_to_measure(self, embedded_geo: GeoDatabases) -> None:
        """start() records how long it took (reported, not asserted: tests never time wall clock)."""
        assert embedded_geo.start_seconds is not None and embedded_geo.start_seconds > 0


def _edges() -> list[str]:
    """The first and last address of every special block and of ipaddress's own lists, and their
    neighbours outside."""
    networks = [ipaddress.ip_network(block) for blocks in SPECIAL_BLOCKS.values() for block in blocks]
    networks += _ipaddress_special_networks()
    edges = []
    for net in networks:
        low, high = int(net.network_address), int(net.broadcast_address)
        top = 2**32 - 1 if net.version == 4 else 2**128 - 1
        for value in (low - 1, low, low + 1, high - 1, high, high + 1):
            if 0 <= value <= top:
                # IPv6Address: ip_address() would read a small integer as IPv4.
                address = ipaddress.IPv4Address(value) if net.version == 4 else ipaddress.IPv6Address(value)
                edges.append(str(address))
    return edges


def _ipaddress_special_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks the running ipaddress treats as not global (private, shared, reserved,
    multicast; their exceptions lie inside them). Private names: read here, in a test, only."""
    found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for constants in (ipaddress._IPv4Constants, ipaddress._IPv6Constants):  # type: ignore[attr-defined]
        found += constants._private_networks
        found += [constants._multicast_network]
        if hasattr(constants, "_public_network"):
            found.append(constants._public_network)
    return found


class TestPlainlyGlobal:
    """The look-up's fast path: canonical text outside the special blocks needs no ipaddress."""

    def test_special_blocks_cover_ipaddress(self) -> None:
        """Every network the running ipaddress does not call global, and multicast, lies inside a
        special block, so the fast path never answers for one of them."""
        blocks = [ipaddress.ip_network(b) for blocks in SPECIAL_BLOCKS.values() for b in blocks]
        networks = _ipaddress_special_networks()
        assert len(networks) > 20
        for net in networks:
            assert any(
                net.version == block.version and net.subnet_of(block)  # type: ignore[arg-type]
                for block in blocks
            ), net

    def test_agrees_with_ipaddress(self) -> None:
        """Wherever the fast path answers, ipaddress says global and not multicast: at every block
        edge and at random addresses of both families."""
        rng = random.Random(7)
        addresses = _edges()
        addresses += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(20_000)]
        addresses += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(5_000)]
        addresses += [str(ipaddress.IPv6Address(rng.getrandbits(16) << 112)) for _ in range(5_000)]
        fast = 0
        for text in addresses:
            if plainly_global(text):
                fast += 1
                parsed = ipaddress.ip_address(text)
                assert parsed.is_global and not parsed.is_multicast, text
        assert fast > 20_000

    @pytest.mark.parametrize(
        "address",
        ["2A00:1450::1", "2a00:1450:0::1", "fe80::1%eth0", "::ffff:8.8.8.8", "8.8.8.8 ", "08.8.8.8",
         "8.8.8.8\x00", "\ud800", "10.1.2.3", "224.0.0.1", "2001:db8::1", "ff02::1", "192.0.2.1"],
    )
    def test_other_text_takes_the_exact_path(self, address: str) -> None:
        """Non-canonical, scoped, mapped, special or invalid text is left to ipaddress."""
        assert not plainly_global(address)

    @pytest.mark.parametrize("value", [b"\x08\x08\x08\x08", 134744072, None])
    def test_not_text(self, value: object) -> None:
        """Only text takes the fast path (ipaddress also reads packed bytes and integers)."""
        assert not plainly_global(value)

    def test_same_answers_both_paths(self, embedded_geo: GeoDatabases) -> None:
        """The databases answer the text exactly as they answer the address object."""
        rng = random.Random(11)
        texts = ["8.8.8.8", "2a01:4f8::1", "2001:4860:4860::8888", "51.178.0.1", "1.1.1.1"]
        texts += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(3_000)]
        texts += [str(ipaddress.IPv6Address((0x2000 + rng.getrandbits(12)) << 112 | rng.getrandbits(112)))
                  for _ in range(3_000)]
        for text in filter(plainly_global, texts):
            assert embedded_geo._query(text) == embedded_geo._query(ipaddress.ip_address(text)), text

    def test_answers_shared(self, embedded_geo: GeoDatabases) -> None:
        """Two addresses with the same AS and country share one answer object."""
        assert embedded_geo.lookup("8.8.8.8") is embedded_geo.lookup("8.8.4.4")


class TestGeoDatabases:
    def test_no_io_before_start(self, small_files: dict[str, Any]) -> None:
        """Before start() nothing is loaded: no databases listed and answers are unknown."""
        databases = GeoDatabases(GeoConfig(**small_files))
        assert databases.databases() == []
        assert databases.lookup("8.8.8.8") == UNKNOWN_ANSWER

    def test_configured_files(self, started: Factory, small_files: dict[str, Any]) -> None:
        """Configured files are used instead of the embedded data, and named in databases()."""
        databases = started(**small_files)
        assert databases.lookup("51.178.0.1") == GeoAnswer(16276, "OVH SAS", "FR", "eea")
        infos = {info.name: info for info in databases.databases()}
        assert infos["country"].path == str(small_files["country_db"])
        assert infos["country"].source.startswith("Test-Country")
        assert infos["asn"].source == "douane tests"
        # A user's file: douane cannot know its licence, and pyasn files carry no date.
        assert infos["asn"].licence == "" and infos["asn"].build_time is None
        assert infos["country"].build_time is not None
        assert infos["country"].build_time.timestamp() == 1_700_000_000

    @pytest.mark.parametrize(
        "record",
        [
            {"country_code": "FR"},
            {"country": {"iso_code": "FR", "names": {"en": "France"}}, "continent": {"code": "EU"}},
            {"country_code": "fr"},
        ],
        ids=["ip-location-db", "maxmind", "lowercase"],
    )
    def test_both_country_schemas(
        self,
        started: Factory,
        small_files: dict[str, Any],
        tmp_path: Path,
        make_mmdb: Writer,
        record: dict[str, Any],
    ) -> None:
        """Both `country_code` and `country.iso_code` records give the country."""
        path = tmp_path / "schema.mmdb"
        path.write_bytes(make_mmdb({"51.178.0.0/16": record}))
        databases = started(**_config_for(small_files, country_db=path))
        assert databases.lookup("51.178.0.1").location_country == "FR"

    @pytest.mark.parametrize(
        "record",
        [{"registered_country": {"iso_code": "FR"}}, {"country_code": "ZZ"}, {"country_code": 7}],
    )
    def test_records_without_a_location(
        self,
        started: Factory,
        small_files: dict[str, Any],
        tmp_path: Path,
        make_mmdb: Writer,
        record: dict[str, Any],
    ) -> None:
        """A record with only a registration country, a placeholder or a non-code has no country."""
        path = tmp_path / "odd.mmdb"
        path.write_bytes(make_mmdb({"51.178.0.0/16": record}))
        databases = started(**_config_for(small_files, country_db=path))
        assert databases.lookup("51.178.0.1").location_country is None
        assert databases.problems() == []

    @pytest.mark.parametrize("compress", [gzip.compress, lzma.compress], ids=["gzip", "xz"])
    def test_compressed_files(
        self,
        started: Factory,
        small_files: dict[str, Any],
        tmp_path: Path,
        compress: Callable[[bytes], bytes],
    ) -> None:
        """Country, ASN and AS-names files can each be gzip or xz compressed."""
        config: dict[str, Any] = {}
        for key, path in small_files.items():
            packed = tmp_path / (path.name + ".packed")
            packed.write_bytes(compress(path.read_bytes()))
            config[key] = packed
        databases = started(**config)
        assert databases.problems() == []
        assert databases.lookup("2a01:4f8::1") == GeoAnswer(24940, "Hetzner Online GmbH", "DE", "eea")

    def test_ipv4_only_country_database(
        self, started: Factory, small_files: dict[str, Any], tmp_path: Path, make_mmdb: Writer
    ) -> None:
        """An IPv4-only country database answers IPv4 and has no answer, not an error, for IPv6."""
        path = tmp_path / "v4.mmdb"
        path.write_bytes(make_mmdb({"51.178.0.0/16": {"country_code": "FR"}}, ip_version=4))
        databases = started(**_config_for(small_files, country_db=path))
        assert databases.lookup("51.178.0.1").location_country == "FR"
        assert databases.lookup("2a01:4f8::1") == GeoAnswer(24940, "Hetzner Online GmbH", None, "unknown")
        assert all(info.lookup_errors == 0 for info in databases.databases())

    def test_cache_is_bounded(self, started: Factory, small_files: dict[str, Any]) -> None:
        """The answer cache never holds more than cache_size addresses."""
        databases = started(**small_files, cache_size=100)
        for number in range(1000):
            databases.lookup(f"8.8.{number // 256}.{number % 256}")
        info = databases.cache_info()
        assert info.maxsize == 100 and info.currsize == 100
        assert info.misses == 1000

    def test_cache_hit(self, started: Factory, small_files: dict[str, Any]) -> None:
        """A second look-up of the same address is served from the cache."""
        databases = started(**small_files)
        first = databases.lookup("8.8.8.8")
        assert databases.lookup("8.8.8.8") is first
        assert databases.cache_info().hits == 1

    def test_cache_disabled(self, started: Factory, small_files: dict[str, Any]) -> None:
        """cache_size=0 keeps no answer but still answers."""
        databases = started(**small_files, cache_size=0)
        assert databases.lookup("8.8.8.8").asn == 15169
        assert databases.cache_info().currsize == 0

    def test_stop(self, small_files: dict[str, Any]) -> None:
        """After stop() every look-up is unknown, including addresses answered before."""
        databases = GeoDatabases(GeoConfig(**small_files))
        databases.start()
        assert databases.lookup("8.8.8.8").asn == 15169
        databases.stop()
        assert databases.lookup("8.8.8.8") == UNKNOWN_ANSWER

    def test_start_logs_duration(self, small_files: dict[str, Any]) -> None:
        """start() logs how long loading took and how many problems it found."""
        with structlog.testing.capture_logs() as logs:
            GeoDatabases(GeoConfig(**small_files)).start()
        started_events = [log for log in logs if log["event"] == "geo_databases_started"]
        assert len(started_events) == 1
        assert started_events[0]["problems"] == 0 and started_events[0]["seconds"] >= 0


def _random_bytes(path: Path, make_mmdb: Writer) -> None:
    path.write_bytes(os.urandom(4096))


def _gzip_of_garbage(path: Path, make_mmdb: Writer) -> None:
    path.write_bytes(gzip.compress(os.urandom(4096)))


def _truncated_gzip(path: Path, make_mmdb: Writer) -> None:
    path.write_bytes(gzip.compress(os.urandom(4096))[:100])


def _truncated_xz(path: Path, make_mmdb: Writer) -> None:
    path.write_bytes(lzma.compress(b"x" * 10000)[:40])


def _empty(path: Path, make_mmdb: Writer) -> None:
    path.write_bytes(b"")


def _directory(path: Path, make_mmdb: Writer) -> None:
    path.mkdir()


def _truncated_mmdb(path: Path, make_mmdb: Writer) -> None:
    # The embedded database cut in half: the metadata (at the end) is gone.
    whole = gzip.decompress(embedded.COUNTRY_FILE.read_bytes())
    path.write_bytes(whole[: len(whole) // 2])


def _mmdb_tree_past_end(path: Path, make_mmdb: Writer) -> None:
    # Valid metadata but a node count larger than the file: the tree cannot be read.
    good = make_mmdb({"8.8.8.0/24": {"country_code": "US"}})
    marker = good.rindex(b"\xab\xcd\xefMaxMind.com")
    path.write_bytes(good[: marker - 40] + good[marker:])


BROKEN_COUNTRY = {
    "random bytes": (_random_bytes, "not a valid MaxMind DB file"),
    "gzip of garbage": (_gzip_of_garbage, "not a valid MaxMind DB file"),
    "truncated gzip": (_truncated_gzip, "truncated"),
    "truncated xz": (_truncated_xz, "truncated"),
    "truncated mmdb": (_truncated_mmdb, "not a valid MaxMind DB file"),
    "tree past the end": (_mmdb_tree_past_end, "MaxMind DB"),
    "empty file": (_empty, "not a valid MaxMind DB file"),
    "a directory": (_directory, "is a directory"),
}

BROKEN_ASN = {
    "random bytes": (_random_bytes, "not a pyasn IPASN"),
    "gzip of garbage": (_gzip_of_garbage, "not a pyasn IPASN"),
    "truncated gzip": (_truncated_gzip, "truncated"),
    "empty file": (_empty, "is empty"),
    "a directory": (_directory, "is a directory"),
}


class TestBrokenDatabases:
    """A missing or corrupt file: a warning, a problem naming the file, unknown answers; no crash."""

    @pytest.mark.parametrize("key", ["country_db", "asn_db", "as_names"])
    def test_missing_file(self, small_files: dict[str, Any], tmp_path: Path, key: str) -> None:
        """A missing file is logged as a warning, named by problems(), and its fields are None."""
        missing = tmp_path / "nowhere" / "gone.db"
        with structlog.testing.capture_logs() as logs:
            databases = GeoDatabases(GeoConfig(**_config_for(small_files, **{key: missing})))
            databases.start()
        warnings = [log for log in logs if log["event"] == "geo_database_unavailable"]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["path"] == str(missing) and warnings[0]["error"] == "file not found"
        assert databases.problems() == [
            f"{warnings[0]['database'].replace('_', '-')} database {missing}: file not found"
        ]
        answer = databases.lookup("51.178.0.1")
        expected = {
            "country_db": GeoAnswer(16276, "OVH SAS", None, "unknown"),
            "asn_db": GeoAnswer(None, None, "FR", "eea"),
            "as_names": GeoAnswer(16276, None, "FR", "eea"),
        }
        assert answer == expected[key]
        info = next(info for info in databases.databases() if info.error is not None)
        assert info.build_time is None and info.path == str(missing)

    @pytest.mark.parametrize("case", sorted(BROKEN_COUNTRY))
    def test_corrupt_country_database(
        self, small_files: dict[str, Any], tmp_path: Path, make_mmdb: Writer, case: str
    ) -> None:
        """A corrupt country file is refused with a reason, and the country is unknown."""
        make, reason = BROKEN_COUNTRY[case]
        path = tmp_path / "broken.mmdb"
        make(path, make_mmdb)
        with structlog.testing.capture_logs() as logs:
            databases = GeoDatabases(GeoConfig(**_config_for(small_files, country_db=path)))
            databases.start()
        assert [log["database"] for log in logs if log["event"] == "geo_database_unavailable"] == ["country"]
        (problem,) = databases.problems()
        assert problem.startswith(f"country database {path}: ") and reason in problem
        assert databases.lookup("51.178.0.1") == GeoAnswer(16276, "OVH SAS", None, "unknown")

    @pytest.mark.parametrize("case", sorted(BROKEN_ASN))
    def test_corrupt_asn_database(
        self, small_files: dict[str, Any], tmp_path: Path, make_mmdb: Writer, case: str
    ) -> None:
        """A corrupt IPASN file is refused with a reason, and the ASN is unknown."""
        make, reason = BROKEN_ASN[case]
        path = tmp_path / "broken.dat"
        make(path, make_mmdb)
        with structlog.testing.capture_logs() as logs:
            databases = GeoDatabases(GeoConfig(**_config_for(small_files, asn_db=path)))
            databases.start()
        assert [log["database"] for log in logs if log["event"] == "geo_database_unavailable"] == ["asn"]
        (problem,) = databases.problems()
        assert problem.startswith(f"asn database {path}: ") and reason in problem
        assert databases.lookup("51.178.0.1") == GeoAnswer(None, None, "FR", "eea")

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            ("8.8.8.0/24 15169\n", "not a valid pyasn IPASN file"),  # space, not a tab
            ("8.8.8.0/33\t15169\n", "not a valid pyasn IPASN file"),
            ("8.8.8.0/24\t15169\n\0\n", "NUL"),
            ("; only comments\n", "holds no prefix"),
        ],
    )
    def test_malformed_ipasn_text(
        self, small_files: dict[str, Any], tmp_path: Path, content: str, reason: str
    ) -> None:
        """An IPASN text file with a bad line is refused with the line and the reason."""
        path = tmp_path / "bad.dat"
        path.write_text(content, encoding="ascii")
        problems = check_database_files(GeoConfig(**_config_for(small_files, asn_db=path)))
        assert len(problems) == 1 and reason in problems[0] and str(path) in problems[0]

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"\xff\xfe not json", "not valid JSON"),
            (b"[1, 2]", "expected a JSON object"),
            (b'{"x": "y"}', "no entry maps"),
            (b"[" * 100_000, "not valid JSON"),
        ],
    )
    def test_corrupt_as_names(
        self, small_files: dict[str, Any], tmp_path: Path, content: bytes, reason: str
    ) -> None:
        """A corrupt AS-names file is refused; AS numbers are still answered, without names."""
        path = tmp_path / "names.json"
        path.write_bytes(content)
        with structlog.testing.capture_logs():
            databases = GeoDatabases(GeoConfig(**_config_for(small_files, as_names=path)))
            databases.start()
        (problem,) = databases.problems()
        assert problem.startswith(f"as-names database {path}: ") and reason in problem
        assert databases.lookup("8.8.8.8") == GeoAnswer(15169, None, "US", "third")

    def test_as_names_bad_entries_dropped(
        self, started: Factory, small_files: dict[str, Any], tmp_path: Path
    ) -> None:
        """AS-names entries with a non-numeric key or non-string name are dropped, the rest kept."""
        path = tmp_path / "names.json"
        names = {"15169": "Google\x1b[31m LLC", "²": "x", "16276": 5, "AS1": "y"}
        path.write_text(json.dumps(names), encoding="utf-8")
        databases = started(**_config_for(small_files, as_names=path))
        assert databases.problems() == []
        assert databases.lookup("8.8.8.8").as_name == "Google[31m LLC"  # control character removed
        assert databases.lookup("51.178.0.1").as_name is None

    def test_corrupt_data_found_at_lookup(
        self, started: Factory, small_files: dict[str, Any], tmp_path: Path, make_mmdb: Writer
    ) -> None:
        """A tree entry pointing outside the data is counted and logged once, and answers unknown."""
        path = tmp_path / "bad-pointer.mmdb"
        path.write_bytes(
            make_mmdb({"51.178.0.0/16": {"country_code": "FR"}}, raw_pointers={"9.9.9.0/24": 10**6})
        )
        with structlog.testing.capture_logs() as logs:
            databases = started(**_config_for(small_files, country_db=path))
            assert databases.problems() == []  # the probes at open time did not walk that branch
            for last in range(1, 4):
                assert databases.lookup(f"9.9.9.{last}").location_country is None
        assert databases.lookup("51.178.0.1").location_country == "FR"
        failures = [log for log in logs if log["event"] == "geo_lookup_failed"]
        assert len(failures) == 1 and failures[0]["database"] == "country"
        country = next(info for info in databases.databases() if info.name == "country")
        assert country.lookup_errors == 3

    def test_wrong_kind_of_mmdb(self, small_files: dict[str, Any], tmp_path: Path, make_mmdb: Writer) -> None:
        """An mmdb whose records carry no country (an ASN mmdb) is refused as not a country database."""
        path = tmp_path / "asn.mmdb"
        path.write_bytes(
            make_mmdb({"8.8.8.0/24": {"autonomous_system_number": 15169}}, database_type="GeoLite2-ASN")
        )
        problems = check_database_files(GeoConfig(**_config_for(small_files, country_db=path)))
        assert len(problems) == 1 and "is this a country database?" in problems[0]

    def test_unexpected_exception_contained(
        self, small_files: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unexpected exception from a parser is recorded as a problem, never raised."""

        def explode(path: Path) -> CountryDatabase:
            raise KeyError("surprise")

        monkeypatch.setattr(CountryDatabase, "open", explode)
        with structlog.testing.capture_logs():
            databases = GeoDatabases(GeoConfig(**small_files))
            databases.start()
        (problem,) = databases.problems()
        assert "KeyError" in problem and str(small_files["country_db"]) in problem
        assert databases.lookup("8.8.8.8").asn == 15169

    def test_decompression_bomb_refused(
        self,
        small_files: dict[str, Any],
        tmp_path: Path,
        ipasn_text: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A compressed file that expands beyond the limit is refused, not loaded."""
        monkeypatch.setattr("douane.geo.files.MAX_DECOMPRESSED_BYTES", 1000)
        path = tmp_path / "bomb.dat.gz"
        path.write_bytes(gzip.compress(ipasn_text.encode() + b";" * 10_000))
        problems = check_database_files(GeoConfig(**_config_for(small_files, asn_db=path)))
        # The limit holds for every file; here only the ASN file is both compressed and large.
        (problem,) = [problem for problem in problems if problem.startswith("asn ")]
        assert "refusing to load it" in problem


class TestDatabaseInfo:
    def test_frozen_snapshot(self, started: Factory, small_files: dict[str, Any]) -> None:
        """databases() returns frozen snapshots, one per database, in a stable order."""
        infos = started(**small_files).databases()
        assert [info.name for info in infos] == ["country", "asn", "as_names"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            infos[0].error = "x"  # type: ignore[misc]
        assert isinstance(infos[0], DatabaseInfo)


class TestCheckDatabaseFiles:
    def test_good_files(self, small_files: dict[str, Any]) -> None:
        """Valid files give no problem."""
        assert check_database_files(GeoConfig(**small_files)) == []

    def test_every_problem_listed(self, tmp_path: Path) -> None:
        """Each broken file gives its own message naming the file, and nothing is logged."""
        config = GeoConfig(
            country_db=tmp_path / "a.mmdb", asn_db=tmp_path / "b.dat", as_names=tmp_path / "c.json"
        )
        with structlog.testing.capture_logs() as logs:
            problems = check_database_files(config)
        assert problems == [
            f"country database {tmp_path / 'a.mmdb'}: file not found",
            f"asn database {tmp_path / 'b.dat'}: file not found",
            f"as-names database {tmp_path / 'c.json'}: file not found",
        ]
        assert logs == []


class TestAttribution:
    def test_names_sources_and_licence(self) -> None:
        """The attribution names DB-IP, RouteViews, the NRO and CC BY 4.0, with links."""
        for part in ("DB-IP", "https://db-ip.com", "RouteViews", "NRO", "Creative Commons"):
            assert part in ATTRIBUTION
        assert "https://creativecommons.org/licenses/by/4.0/" in ATTRIBUTION
