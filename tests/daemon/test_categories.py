"""Data categories from configuration and the catalogue: zones (`zone:NAME`) and services (`service:SLUG`)."""

from __future__ import annotations

from typing import Any

from douane.daemon.categories import ZoneMatcher, add_evidence, service_category_stage, zone_stage
from douane.daemon.config import ZoneConfig
from douane.geo.services import ServiceCatalogue

ZONES = (
    ZoneConfig("hospital", ("10.0.0.0/8",), ("personal",)),
    ZoneConfig("pacs", ("10.20.0.0/24",), ("health",)),
    ZoneConfig("pupil-records", ("10.40.1.10/32", "fd00:40::10/128"), ("school",)),
)


def record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"src": "10.20.0.15", "dst": "20.199.120.7", "direction": "outbound",
                            "zone": None, "service": None, "data_categories": {}}
    base.update(fields)
    return base


class TestZoneMatcher:
    def test_most_specific_zone_wins(self) -> None:
        """An address in a zone nested in another belongs to the nested, more specific zone."""
        matcher = ZoneMatcher(ZONES)
        assert matcher.zone_of("10.20.0.15").name == "pacs"  # type: ignore[union-attr]
        assert matcher.zone_of("10.99.0.1").name == "hospital"  # type: ignore[union-attr]
        assert matcher.zone_of("fd00:40::10").name == "pupil-records"  # type: ignore[union-attr]
        assert matcher.zone_of("192.168.1.1") is None
        assert matcher.zone_of("not an address") is None


class TestZoneStage:
    def test_outbound_uses_the_source(self) -> None:
        """An outbound flow from the PACS is health data with the evidence zone:pacs."""
        out = zone_stage(ZONES)(record())
        assert out["zone"] == "pacs"
        assert out["data_categories"] == {"health": ["zone:pacs"]}

    def test_inbound_uses_the_destination(self) -> None:
        """An inbound flow is attributed to the zone of its internal destination."""
        out = zone_stage(ZONES)(record(src="203.0.113.5", dst="10.40.1.10", direction="inbound"))
        assert out["zone"] == "pupil-records"
        assert out["data_categories"] == {"school": ["zone:pupil-records"]}

    def test_external_and_unzoned_untouched(self) -> None:
        """A flow between two outside addresses, or from no zone, gets no zone and no category."""
        stage = zone_stage(ZONES)
        assert stage(record(src="198.51.100.1", direction="external"))["zone"] is None
        out = stage(record(src="192.168.1.1"))
        assert out["zone"] is None and out["data_categories"] == {}

    def test_no_zones_configured(self) -> None:
        """Without zones the stage changes nothing."""
        assert zone_stage(())(record())["data_categories"] == {}


class TestServiceCategoryStage:
    def test_health_service_adds_health(self) -> None:
        """A flow to Doctolib carries health data, with the evidence service:doctolib."""
        catalogue = ServiceCatalogue.load()
        slug = catalogue.match("www.doctolib.fr").slug  # type: ignore[union-attr]
        out = service_category_stage(catalogue)(record(service=slug))
        assert out["data_categories"] == {"health": [f"service:{slug}"]}

    def test_service_without_category(self) -> None:
        """A service with no category hint (Azure storage) adds nothing."""
        out = service_category_stage(ServiceCatalogue.load())(record(service="azure-storage"))
        assert out["data_categories"] == {}


class TestAddEvidence:
    def test_once_and_in_order(self) -> None:
        """Evidence is added once, and categories keep the order health, school, personal."""
        rec = record()
        add_evidence(rec, "personal", "zone:offices")
        add_evidence(rec, "health", "protocol:dicom")
        add_evidence(rec, "health", "protocol:dicom")
        add_evidence(rec, "health", "zone:pacs")
        assert list(rec["data_categories"]) == ["health", "personal"]
        assert rec["data_categories"]["health"] == ["protocol:dicom", "zone:pacs"]
