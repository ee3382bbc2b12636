"""douane.geo.jurisdiction: provider, controller, exposure and jurisdiction of a destination."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from douane.geo import GeoDatabases
from douane.geo.jurisdiction import (
    JURISDICTION_ORDER,
    Determination,
    Jurisdictions,
    load_jurisdictions,
    make_jurisdiction_stage,
    side_jurisdiction,
    worst,
)

FIXTURES = Path(__file__).parent / "data" / "ranges"


@pytest.fixture(scope="module")
def plain() -> Jurisdictions:
    """The engine with the shipped registry and no range files."""
    return load_jurisdictions()


@pytest.fixture(scope="module")
def with_ranges() -> Jurisdictions:
    """The engine with the fixture range files of every format."""
    return load_jurisdictions(FIXTURES)


def decide(engine: Jurisdictions, geo: GeoDatabases, address: str) -> Determination:
    """The answer with its evidence, and check that flows (no evidence) get the same answer."""
    answer = geo.lookup(address)
    explained = engine.explain(address, answer.asn, answer.location_country, None, None, answer.as_name)
    quick = engine.determine(address, answer.asn, answer.location_country, None, None, answer.as_name)
    assert quick.evidence == () and replace(explained, evidence=()) == quick
    return explained


class TestJurisdictions:
    def test_azure_france_central(self, plain: Jurisdictions, embedded_geo: GeoDatabases) -> None:
        """An Azure France Central address stands in the EEA but is US-controlled: jurisdiction us."""
        for address in ("20.199.120.7", "20.19.0.1"):
            found = decide(plain, embedded_geo, address)
            assert (found.location_country, found.location_zone) == ("FR", "eea")
            assert (found.provider, found.controller_country, found.controller_zone) == (
                "microsoft", "US", "third")
            assert "us-cloud-act" in found.exposure and "us-fisa-702" in found.exposure
            assert found.jurisdiction == "us"

    @pytest.mark.parametrize(
        ("address", "provider", "country"),
        [("51.178.64.10", "ovhcloud", "FR"), ("2a01:4f8::1", "hetzner", "DE")],
    )
    def test_eu_providers(self, plain: Jurisdictions, embedded_geo: GeoDatabases, address: str,
                          provider: str, country: str) -> None:
        """OVHcloud and Hetzner: EU location, EU controller, no exposure: jurisdiction eu."""
        found = decide(plain, embedded_geo, address)
        assert (found.provider, found.controller_country, found.exposure) == (provider, country, ())
        assert found.jurisdiction == "eu"

    @pytest.mark.parametrize("address", ["47.91.0.1", "8.208.0.1"])
    def test_alibaba(self, plain: Jurisdictions, embedded_geo: GeoDatabases, address: str) -> None:
        """Alibaba Cloud is Chinese-controlled wherever it stands (here Japan, the UK): cn."""
        found = decide(plain, embedded_geo, address)
        assert found.location_zone == "adequate"
        assert (found.provider, found.controller_country) == ("alibaba", "CN")
        assert found.exposure == ("cn-national-intelligence-law",)
        assert found.jurisdiction == "cn"

    @pytest.mark.parametrize(
        ("address", "asn", "provider"),
        [("34.1.0.1", 43515, "google"), ("34.3.192.1", 214609, "google"), ("2.16.48.1", 20940, "akamai")],
    )
    def test_eu_subsidiary(self, plain: Jurisdictions, embedded_geo: GeoDatabases, address: str,
                           asn: int, provider: str) -> None:
        """An address of an EU subsidiary's AS (Google Ireland, Google Cloud EMEA, Akamai
        International B.V.) in the EEA takes its US parent's jurisdiction."""
        found = decide(plain, embedded_geo, address)
        assert embedded_geo.lookup(address).asn == asn
        assert found.location_zone == "eea"
        assert (found.provider, found.controller_country, found.jurisdiction) == (provider, "US", "us")
        assert any("subsidiary" in e.reason for e in found.evidence)

    def test_unregistered_as(self, plain: Jurisdictions, embedded_geo: GeoDatabases) -> None:
        """An AS the registry does not know is `other`, its controller a weak guess, said so."""
        found = decide(plain, embedded_geo, "193.51.224.1")  # RENATER, the research network
        assert (found.provider, found.controller_country, found.controller_weak) == ("other", "FR", True)
        guess = next(e for e in found.evidence if e.field == "controller_country")
        assert guess.reason.startswith("weak guess")

    def test_weak_guess_from_as_name_country(self, plain: Jurisdictions) -> None:
        """A RIPE-style AS name ending in `, CC` gives the guessed country and its laws."""
        found = plain.explain("192.0.2.1", 64999, "FR", None, None, "EXAMPLE-AS, RU")
        assert (found.provider, found.controller_country, found.exposure) == ("other", "RU", ("ru-sorm",))
        assert found.jurisdiction == "ru"

    def test_no_data(self, plain: Jurisdictions) -> None:
        """No AS and no country: nothing decided, jurisdiction unknown."""
        found = plain.determine("10.1.2.3", None, None)
        assert (found.provider, found.controller_country, found.jurisdiction) == (None, None, "unknown")

    def test_range_beats_asn(self, with_ranges: Jurisdictions, embedded_geo: GeoDatabases) -> None:
        """A published range is more specific than the AS: an AWS range inside OVH's AS is amazon."""
        assert embedded_geo.lookup("51.178.128.1").asn == 16276
        found = decide(with_ranges, embedded_geo, "51.178.128.1")
        assert (found.provider, found.region, found.range_service) == ("amazon", "eu-west-3", "EC2")
        assert found.jurisdiction == "us"
        reasons = [e.reason for e in found.evidence if e.field == "provider"]
        assert reasons[0].startswith("published range 51.178.128.0/24")
        assert "the range's amazon wins" in reasons[1]

    def test_region_refines_location(self, with_ranges: Jurisdictions) -> None:
        """A cloud region's country replaces the geolocation, with both in the evidence."""
        found = with_ranges.explain("35.180.1.1", 16509, "US")
        assert (found.location_country, found.location_zone) == ("FR", "eea")
        region = [e for e in found.evidence if e.field == "location_country"]
        assert [e.value for e in region] == ["US", "FR"]
        assert "eu-west-3" in region[1].reason and region[1].source.startswith("https://docs.aws")

    def test_azure_range_names_region_and_service(self, with_ranges: Jurisdictions,
                                                  embedded_geo: GeoDatabases) -> None:
        """The Azure Service Tags place the demo's address in francecentral, AzureStorage."""
        found = decide(with_ranges, embedded_geo, "20.199.120.7")
        assert (found.region, found.range_service, found.provider) == (
            "francecentral", "AzureStorage", "microsoft")
        assert found.jurisdiction == "us"

    def test_hostname_when_no_network_match(self, plain: Jurisdictions) -> None:
        """Without range or AS, a registry domain names the controller."""
        found = plain.determine("192.0.2.7", None, "FR", "files.ovh.net")
        assert (found.provider, found.jurisdiction) == ("ovhcloud", "eu")

    def test_asn_beats_hostname(self, plain: Jurisdictions) -> None:
        """A name under another company's domain does not override the AS (a CNAME to a CDN)."""
        found = plain.determine("192.0.2.8", 13335, "FR", "www.ovh.com")
        assert found.provider == "cloudflare"

    def test_joint_venture_refines_supplier(self, plain: Jurisdictions) -> None:
        """On Google's network, an S3NS name means S3NS (French-controlled), not Google."""
        found = plain.determine("34.155.1.1", 396982, "FR", "console.s3ns.io")
        assert (found.provider, found.controller_country, found.exposure) == ("s3ns", "FR", ())
        assert found.jurisdiction == "eu"
        assert plain.determine("34.155.1.1", 396982, "FR", "www.google.com").provider == "google"

    def test_service_names_provider(self, plain: Jurisdictions) -> None:
        """A service from the catalogue names its provider when nothing stronger does."""
        engine = Jurisdictions(plain.registry.with_services({"azure-storage": "microsoft"}),
                               plain.ranges, plain.regions, plain.zones)
        found = engine.determine("192.0.2.9", None, "FR", None, "azure-storage")
        assert (found.provider, found.jurisdiction) == ("microsoft", "us")

    def test_evidence_cites_sources(self, plain: Jurisdictions, embedded_geo: GeoDatabases) -> None:
        """Every piece of evidence names where it comes from."""
        found = decide(plain, embedded_geo, "20.199.120.7")
        assert {e.field for e in found.evidence} >= {
            "location_country", "provider", "controller_country", "exposure", "jurisdiction"}
        assert all(e.source for e in found.evidence)
        law = next(e for e in found.evidence if e.value == "us-cloud-act")
        assert law.source == "https://www.law.cornell.edu/uscode/text/18/2713"

    def test_cached(self, plain: Jurisdictions) -> None:
        """The same destination is decided once."""
        first = plain.determine("192.0.2.200", 16276, "FR")
        assert plain.determine("192.0.2.200", 16276, "FR") is first

    def test_cached_per_network(self, plain: Jurisdictions) -> None:
        """Addresses with the same AS, country and name share one answer: the address itself does
        not decide, only the published range that holds it."""
        first = plain.determine("192.0.2.201", 16276, "FR", "files.ovh.net")
        assert plain.determine("192.0.2.202", 16276, "FR", "files.ovh.net") is first

    def test_cached_per_range(self, with_ranges: Jurisdictions) -> None:
        """With range files, two addresses of one AS in different published ranges keep their own
        answers (region, country), and each equals the uncached one."""
        storage = with_ranges.determine("20.199.120.7", 8075, "US")
        cloud = with_ranges.determine("20.19.1.1", 8075, "US")
        assert storage.range_service != cloud.range_service or storage.region != cloud.region
        for address, answer in (("20.199.120.7", storage), ("20.19.1.1", cloud)):
            assert replace(with_ranges.explain(address, 8075, "US"), evidence=()) == answer

    def test_provider_labels(self, plain: Jurisdictions) -> None:
        """The provider label set is the registry's slugs plus other and unknown."""
        assert plain.provider_labels == plain.registry.slugs | {"other", "unknown"}

    def test_range_problems_reported(self, tmp_path: Path) -> None:
        """A corrupt range file is a problem for `douane check`, not an exception."""
        (tmp_path / "ip-ranges.json").write_text("{")
        engine = load_jurisdictions(tmp_path)
        assert len(engine.ranges) == 0
        assert engine.problems() and "ip-ranges.json" in engine.problems()[0]


class TestOrder:
    @pytest.mark.parametrize(
        ("sides", "expected"),
        [
            (("eu", "eu"), "eu"),
            (("eu", "unknown"), "unknown"),
            (("eu", "third"), "third"),
            (("third", "us"), "us"),
            (("us", "cn"), "cn"),
            (("ru", "us"), "ru"),
            (("cn", "ru"), "cn"),
            (("eu", "bogus"), "unknown"),
        ],
    )
    def test_worst(self, sides: tuple[str, str], expected: str) -> None:
        """The worst side wins, in the documented order."""
        assert worst(*sides) == expected

    def test_order(self) -> None:
        """The order is the one the README documents, and `eu` is the best."""
        assert JURISDICTION_ORDER == ("eu", "unknown", "third", "us", "ru", "cn")

    @pytest.mark.parametrize(
        ("country", "zone", "side"),
        [("FR", "eea", "eu"), ("CH", "adequate", "eu"), ("US", "third", "us"), ("CN", "third", "cn"),
         ("RU", "third", "ru"), ("IN", "third", "third"), (None, "unknown", "unknown")],
    )
    def test_side(self, country: str | None, zone: str, side: str) -> None:
        """EEA and adequate countries are eu; the named regimes keep their names."""
        assert side_jurisdiction(country, zone) == side


def record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "src": "10.20.0.15", "dst": "20.199.120.7", "direction": "outbound", "hostname": None,
        "service": None, "asn": 8075, "as_name": "Microsoft Corporation", "location_country": "FR",
        "location_zone": "eea", "provider": None, "controller_country": None,
        "controller_zone": "unknown", "exposure": [], "jurisdiction": "unknown",
    }
    base.update(fields)
    return base


class TestMakeJurisdictionStage:
    def test_fills_fields(self, plain: Jurisdictions) -> None:
        """The stage fills provider, controller, exposure and jurisdiction of an outbound flow."""
        out = make_jurisdiction_stage(plain)(record())
        assert out["provider"] == "microsoft" and out["controller_zone"] == "third"
        assert out["exposure"] == ["us-cloud-act", "us-fisa-702"] and out["jurisdiction"] == "us"

    def test_inbound_uses_the_remote_side(self, plain: Jurisdictions) -> None:
        """An inbound flow is judged by its source, the remote end."""
        out = make_jurisdiction_stage(plain)(record(src="51.178.64.10", dst="10.0.0.1",
                                                    direction="inbound", asn=16276))
        assert out["provider"] == "ovhcloud" and out["jurisdiction"] == "eu"

    def test_internal_untouched(self, plain: Jurisdictions) -> None:
        """An internal flow keeps its defaults."""
        out = make_jurisdiction_stage(plain)(record(direction="internal"))
        assert out["provider"] is None and out["jurisdiction"] == "unknown"

    def test_exposure_list_is_fresh(self, plain: Jurisdictions) -> None:
        """A sink changing one record's exposure list does not change the next record's."""
        stage = make_jurisdiction_stage(plain)
        first = stage(record())
        first["exposure"].append("tampered")
        assert stage(record())["exposure"] == ["us-cloud-act", "us-fisa-702"]

    def test_resolver_question_is_not_the_destination(self, plain: Jurisdictions) -> None:
        """A DNS question ("dns_query") names what was asked, so it never decides the controller."""
        stage = make_jurisdiction_stage(plain)
        unknown_as = {"dst": "198.51.100.53", "asn": None, "as_name": None, "location_country": None,
                      "location_zone": "unknown"}
        asked = stage(record(hostname="hdh.blob.core.windows.net", hostname_source="dns_query",
                             **unknown_as))
        assert asked["provider"] != "microsoft"
        named = stage(record(hostname="hdh.blob.core.windows.net", hostname_source="tls_sni",
                             **unknown_as))
        assert named["provider"] == "microsoft"
