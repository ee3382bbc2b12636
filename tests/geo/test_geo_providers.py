"""douane.geo.providers: the provider registry, its schema and its facts."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from douane.geo import embedded
from douane.geo.providers import (
    DEFAULT_PROVIDERS_FILE,
    ProvidersError,
    default_registry,
    load_registry,
    parse_registry,
)
from douane.geo.zones import default_zones

# The companies issue 4 names, by slug.
REQUIRED = {
    "microsoft", "amazon", "google", "cloudflare", "akamai", "fastly", "oracle", "ibm", "salesforce",
    "apple", "meta", "zoom", "digitalocean", "alibaba", "tencent", "huawei", "bytedance", "yandex",
    "ovhcloud", "scaleway", "hetzner", "ionos", "outscale", "orange", "deutsche-telekom",
    "infomaniak", "exoscale", "upcloud", "s3ns", "bleu",
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The shipped registry as parsed YAML, to derive broken variants from."""
    loaded: dict[str, Any] = yaml.safe_load(DEFAULT_PROVIDERS_FILE.read_text(encoding="utf-8"))
    return loaded


def broken(document: dict[str, Any], change: Any) -> dict[str, Any]:
    variant = copy.deepcopy(document)
    change(variant)
    return variant


def provider(document: dict[str, Any], slug: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in document["providers"] if p["slug"] == slug)
    return found


class TestLoadRegistry:
    def test_shipped_registry_is_valid(self) -> None:
        """The shipped file loads and lists every company the issue names."""
        registry = load_registry()
        assert registry.slugs >= REQUIRED

    def test_controllers(self) -> None:
        """Each company has its seat's country and that country's laws as exposure."""
        registry = default_registry()
        facts = {
            "microsoft": ("US", ("us-cloud-act", "us-fisa-702")),
            "alibaba": ("CN", ("cn-national-intelligence-law",)),
            "yandex": ("RU", ("ru-sorm",)),
            "ovhcloud": ("FR", ()),
            "hetzner": ("DE", ()),
            "infomaniak": ("CH", ()),
        }
        for slug, (country, exposure) in facts.items():
            entry = registry.providers[slug]
            assert (entry.controller_country, entry.exposure) == (country, exposure)

    def test_joint_ventures_are_not_their_supplier(self) -> None:
        """S3NS and Bleu are French-controlled entries of their own, naming their supplier."""
        registry = default_registry()
        s3ns, bleu = registry.providers["s3ns"], registry.providers["bleu"]
        assert (s3ns.controller_country, s3ns.exposure, s3ns.supplier) == ("FR", (), "google")
        assert (bleu.controller_country, bleu.exposure, bleu.supplier) == ("FR", (), "microsoft")
        assert registry.by_asn(2376) is bleu

    def test_eu_subsidiaries_belong_to_their_parent(self) -> None:
        """An AS of an EU-registered subsidiary resolves to the US parent."""
        registry = default_registry()
        for asn, slug in ((8987, "amazon"), (214101, "amazon"), (200517, "microsoft"),
                          (43515, "google"), (20940, "akamai")):
            entry = registry.by_asn(asn)
            assert entry is not None and entry.slug == slug
            assert entry.controller_country == "US"
            subsidiary = entry.subsidiary_of(asn)
            assert subsidiary is not None and default_zones().zone(subsidiary.country) == "eea"

    def test_every_fact_has_a_source(self) -> None:
        """Company, ASNs, domains, certifications, DPF status and laws all cite https:// URLs."""
        registry = default_registry()
        for entry in registry.providers.values():
            assert entry.sources["company"]
            if entry.all_asns():
                assert entry.sources["asns"]
            if entry.domains:
                assert entry.sources["domains"]
            for certification in entry.certifications:
                assert certification.sources and certification.offer
            if entry.dpf_certified is not None:
                assert entry.dpf_sources
        for law in registry.laws.values():
            assert all(url.startswith("https://") for url in law.sources)

    def test_dpf_only_for_us_controllers(self) -> None:
        """DPF certification is a US company's attribute; every US entry says whether it has it."""
        for entry in default_registry().providers.values():
            assert (entry.dpf_certified is not None) == (entry.controller_country == "US")

    def test_asns_match_embedded_as_names(self) -> None:
        """Every listed AS is named after its company in the embedded data (else: a red flag)."""
        names = json.loads(gzip.decompress(embedded.AS_NAMES_FILE.read_bytes()))
        wrong = []
        for entry in default_registry().providers.values():
            for asn in entry.all_asns():
                name = names.get(str(asn), "")
                if not any(word in name.lower() for word in entry.as_names):
                    wrong.append((entry.slug, asn, name))
        assert wrong == []

    def test_duplicate_asn_refused(self, document: dict[str, Any], tmp_path: Path) -> None:
        """The same AS in two providers is refused, naming both."""
        variant = broken(document, lambda d: provider(d, "hetzner")["asns"].append(16276))
        with pytest.raises(ProvidersError, match=r"providers\[\d+\]\.asns.*ovhcloud lists AS16276"):
            parse_registry(variant, tmp_path / "p.yaml")

    def test_duplicate_slug_refused(self, document: dict[str, Any], tmp_path: Path) -> None:
        """Two providers with one slug are refused."""
        variant = broken(document, lambda d: d["providers"].append(
            {**provider(d, "fastly"), "asns": [], "domains": []}))
        with pytest.raises(ProvidersError, match="a slug no other provider has"):
            parse_registry(variant, tmp_path / "p.yaml")

    @pytest.mark.parametrize("code", ["fr", "FRA", "", None, False])
    def test_bad_country_refused(self, document: dict[str, Any], tmp_path: Path, code: object) -> None:
        """A controller country that is not an ISO alpha-2 code is refused with its key."""
        variant = broken(document, lambda d: provider(d, "ovhcloud").update(controller_country=code))
        with pytest.raises(ProvidersError, match=r"controller_country: expected an ISO 3166-1"):
            parse_registry(variant, tmp_path / "p.yaml")

    def test_missing_sources_refused(self, document: dict[str, Any], tmp_path: Path) -> None:
        """ASNs without a source, or a source that is not an https URL, are refused."""
        variant = broken(document, lambda d: provider(d, "hetzner")["sources"].pop("asns"))
        with pytest.raises(ProvidersError, match=r"sources\.asns: expected URLs"):
            parse_registry(variant, tmp_path / "p.yaml")
        variant = broken(document, lambda d: provider(d, "hetzner")["sources"].update(
            company=["www.hetzner.com"]))
        with pytest.raises(ProvidersError, match=r"sources\.company\[0\]: expected an https:// URL"):
            parse_registry(variant, tmp_path / "p.yaml")
        variant = broken(document, lambda d: provider(d, "outscale")["certifications"][0].pop("sources"))
        with pytest.raises(ProvidersError, match=r"certifications\[0\]"):
            parse_registry(variant, tmp_path / "p.yaml")

    @pytest.mark.parametrize("slug", ["other", "unknown", "OVH", "-x", ""])
    def test_bad_or_reserved_slug_refused(self, document: dict[str, Any], tmp_path: Path,
                                          slug: str) -> None:
        """`other` and `unknown` are label values of their own; slugs are lower-case words."""
        variant = broken(document, lambda d: provider(d, "upcloud").update(slug=slug))
        with pytest.raises(ProvidersError, match=r"\.slug: expected"):
            parse_registry(variant, tmp_path / "p.yaml")

    def test_unknown_law_and_key_refused(self, document: dict[str, Any], tmp_path: Path) -> None:
        """An exposure naming no listed law, or a misspelt key, is refused."""
        variant = broken(document, lambda d: provider(d, "zoom").update(exposure=["us-patriot-act"]))
        with pytest.raises(ProvidersError, match=r"exposure\[0\]: expected a law listed"):
            parse_registry(variant, tmp_path / "p.yaml")
        variant = broken(document, lambda d: provider(d, "zoom").update(domain=["zoom.us"]))
        with pytest.raises(ProvidersError, match="only the keys"):
            parse_registry(variant, tmp_path / "p.yaml")

    def test_bad_supplier_refused(self, document: dict[str, Any], tmp_path: Path) -> None:
        """A joint venture's supplier must be another listed provider."""
        variant = broken(document, lambda d: provider(d, "s3ns").update(supplier="gogle"))
        with pytest.raises(ProvidersError, match=r"supplier: expected the slug of another provider"):
            parse_registry(variant, tmp_path / "p.yaml")

    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A missing or non-YAML file gives a ProvidersError naming it."""
        with pytest.raises(ProvidersError, match="cannot read it"):
            load_registry(tmp_path / "none.yaml")
        bad = tmp_path / "bad.yaml"
        bad.write_text("providers: [\n")
        with pytest.raises(ProvidersError, match="not valid YAML"):
            load_registry(bad)


class TestRegistry:
    def test_hostname_suffix_on_label_boundary(self) -> None:
        """A name matches a domain on a label boundary only; the longest suffix wins."""
        registry = default_registry()
        match = registry.by_hostname("hdh.blob.core.windows.net.")
        assert match is not None and (match[0].slug, match[1]) == ("microsoft", "windows.net")
        assert registry.by_hostname("evil-windows.net") is None
        assert registry.by_hostname("windows.net.evil.example") is None
        assert registry.by_hostname(None) is None
        named = registry.by_hostname("API.S3NS.IO")
        assert named is not None and named[0].slug == "s3ns"

    def test_asn_lookup(self) -> None:
        """A registered AS answers its provider; an unknown one or None answers None."""
        registry = default_registry()
        found = registry.by_asn(16276)
        assert found is not None and found.slug == "ovhcloud"
        assert registry.by_asn(2200) is None and registry.by_asn(None) is None

    def test_with_services(self) -> None:
        """Service slugs from the catalogue map to registry providers; unknown providers are ignored."""
        registry = default_registry().with_services({"azure-storage": "microsoft", "doctolib": "doctolib"})
        found = registry.by_service("azure-storage")
        assert found is not None and found.slug == "microsoft"
        assert registry.by_service("doctolib") is None
        assert default_registry().by_service("azure-storage") is None
