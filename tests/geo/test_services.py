"""The service catalogue: the shipped file, its schema, and suffix matching on label boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from douane.daemon.hostname import clean_hostname
from douane.geo.services import (
    DEFAULT_SERVICES_FILE,
    Service,
    ServiceCatalogue,
    ServicesError,
    default_catalogue,
)

# Provider slugs of organisations that are not hosting providers, so not in geo/providers.yaml.
ORGANISATIONS = {
    "doctolib", "cnam", "ans", "health-data-hub", "gie-sesam-vitale", "apicrypt", "index-education",
    "education-nationale", "kosmos", "aplim", "region-ile-de-france", "region-auvergne-rhone-alpes",
    "region-occitanie", "region-nouvelle-aquitaine", "region-grand-est",
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
version: 1
services:
  - slug: doctolib
    name: Doctolib
    provider: doctolib
    category: health
    suffixes: [doctolib.fr]
    sources: [https://www.doctolib.fr/]
"""


class TestShippedCatalogue:
    def test_loads(self) -> None:
        """The shipped file loads and holds the services the issue asks for."""
        catalogue = ServiceCatalogue.load()
        assert catalogue.path == DEFAULT_SERVICES_FILE
        for slug in ("azure-storage", "microsoft-entra-id", "microsoft-teams", "sharepoint-onedrive",
                     "exchange-online", "google-workspace", "google-cloud", "aws-s3", "aws-cloudfront",
                     "icloud", "cloudflare", "doctolib", "ameli", "mon-espace-sante", "health-data-hub",
                     "esante", "mssante", "apicrypt", "pronote", "educonnect", "skolengo", "ecoledirecte",
                     "ent-ile-de-france", "ent-auvergne-rhone-alpes", "ovhcloud", "scaleway"):
            assert catalogue.get(slug) is not None, slug
        assert len(catalogue) == len(catalogue.slugs) >= 40

    def test_default_is_cached(self) -> None:
        """default_catalogue() loads the file once."""
        assert default_catalogue() is default_catalogue()

    def test_every_entry_cites_a_source(self) -> None:
        """Every service has at least one https source."""
        for service in ServiceCatalogue.load():
            assert service.sources and all(s.startswith("https://") for s in service.sources), service.slug

    def test_no_suffix_claimed_twice(self) -> None:
        """No suffix appears under two services (the loader refuses it; this reads the raw file)."""
        document = yaml.safe_load(DEFAULT_SERVICES_FILE.read_text(encoding="utf-8"))
        suffixes = [s for entry in document["services"] for s in entry["suffixes"]]
        assert len(suffixes) == len(set(suffixes))

    def test_suffixes_are_clean_hostnames(self) -> None:
        """Every suffix is a name clean_hostname keeps as it is, so cleaned names can match it."""
        for service in ServiceCatalogue.load():
            for suffix in service.suffixes:
                assert clean_hostname(suffix) == suffix

    def test_categories(self) -> None:
        """Health and school services carry their hint; the clouds carry none."""
        catalogue = ServiceCatalogue.load()
        assert {s.slug for s in catalogue if s.category == "health"} >= {
            "doctolib", "ameli", "mon-espace-sante", "health-data-hub", "esante", "mssante", "apicrypt",
        }
        assert {s.slug for s in catalogue if s.category == "school"} >= {
            "pronote", "educonnect", "skolengo", "ecoledirecte", "ent-ile-de-france",
        }
        azure = catalogue.get("azure-storage")
        assert azure is not None and azure.category is None

    def test_providers_known(self) -> None:
        """Each provider is in the provider registry or is one of the listed organisations."""
        registry = DEFAULT_SERVICES_FILE.parent / "providers.yaml"
        if not registry.is_file():
            pytest.skip("no provider registry yet")
        document = yaml.safe_load(registry.read_text(encoding="utf-8"))
        known = {entry["slug"] for entry in document["providers"]}
        unknown = ServiceCatalogue.load().providers - known - ORGANISATIONS
        assert not unknown


class TestMatch:
    @pytest.mark.parametrize(("hostname", "slug"), [
        ("doctolib.fr", "doctolib"),
        ("www.doctolib.fr", "doctolib"),
        ("DOCTOLIB.FR.", "doctolib"),
        ("a.b.c.d.e.f.partners.doctolib.fr", "doctolib"),
        ("hdh.blob.core.windows.net", "azure-storage"),
        ("x.queue.core.windows.net", "azure-storage"),
        ("mydb.database.windows.net", "azure"),
        ("login.microsoftonline.com", "microsoft-entra-id"),
        ("login.windows.net", "microsoft-entra-id"),
        ("contoso.sharepoint.com", "sharepoint-onedrive"),
        ("contoso-my.sharepoint.com", "sharepoint-onedrive"),
        ("outlook.office365.com", "exchange-online"),
        ("www.office365.com", "microsoft-365"),
        ("api.teams.skype.com", "microsoft-teams"),
        ("teams.microsoft.com", "microsoft-teams"),
        ("mybucket.s3.amazonaws.com", "aws-s3"),
        ("mybucket.s3.eu-west-3.amazonaws.com", "aws-s3"),
        ("ec2.eu-west-3.amazonaws.com", "aws"),
        ("d111111abcdef8.cloudfront.net", "aws-cloudfront"),
        ("storage.googleapis.com", "google-cloud-storage"),
        ("www.googleapis.com", "google-apis"),
        ("classroom.google.com", "google-classroom"),
        ("41-courier.push.apple.com", "apple-push"),
        ("p123-caldav.icloud.com", "icloud"),
        ("0123456.index-education.net", "pronote"),
        ("educonnect.education.gouv.fr", "educonnect"),
        ("www.education.gouv.fr", "education-nationale"),
        ("wallet.esante.gouv.fr", "esante"),
        ("medecin.mssante.fr", "mssante"),
        ("s3.gra.io.cloud.ovh.net", "ovhcloud-object-storage"),
        ("cluster021.hosting.ovh.net", "ovhcloud"),
        ("bucket.s3.fr-par.scw.cloud", "scaleway-object-storage"),
    ])
    def test_matches(self, hostname: str, slug: str) -> None:
        """A name matches the service of its longest suffix."""
        service = ServiceCatalogue.load().match(hostname)
        assert service is not None and service.slug == slug

    @pytest.mark.parametrize("hostname", [
        "evil-doctolib.fr",  # label boundary: not a subdomain
        "doctolib.fr.evil.com",  # the suffix is at the end or nowhere
        "doctolibfr",
        "fr",
        "net",
        "windows.net.example",
        "notsharepoint.com",
        "",
        ".",
        "example.org",
    ])
    def test_no_match(self, hostname: str) -> None:
        """Names that only contain or resemble a suffix match nothing."""
        assert ServiceCatalogue.load().match(hostname) is None


class TestSchema:
    def test_minimal(self, tmp_path: Path) -> None:
        """A one-service file loads into a Service with tuples."""
        catalogue = ServiceCatalogue.load(_write(tmp_path, GOOD))
        assert list(catalogue) == [Service(
            "doctolib", "Doctolib", "doctolib", "health", ("doctolib.fr",), ("https://www.doctolib.fr/",),
        )]
        assert catalogue.providers == {"doctolib"}

    @pytest.mark.parametrize(("edit", "key", "expected"), [
        (("version: 1", "version: 2"), "version", "expected 1"),
        (("services:", "servicez:"), "(top level)", "only version, services"),
        (("category: health", "category: medical"), "services[0].category", "one of"),
        (("slug: doctolib", "slug: Doctolib"), "services[0].slug", "slug"),
        (("provider: doctolib", "provider: doc tolib"), "services[0].provider", "slug"),
        (("[doctolib.fr]", "[]"), "services[0].suffixes", "non-empty list"),
        (("[doctolib.fr]", "[.doctolib.fr]"), "services[0].suffixes[0]", "domain name"),
        (("[doctolib.fr]", "[fr]"), "services[0].suffixes[0]", "at least two labels"),
        (("[doctolib.fr]", "[Doctolib.fr]"), "services[0].suffixes[0]", "lower-case"),
        (("[doctolib.fr]", "['*.doctolib.fr']"), "services[0].suffixes[0]", "domain name"),
        (("[https://www.doctolib.fr/]", "[http://www.doctolib.fr/]"), "services[0].sources[0]", "https://"),
        (("    sources: [https://www.doctolib.fr/]\n", ""), "services[0]", "missing ['sources']"),
        (("    name: Doctolib\n", "    name: Doctolib\n    url: x\n"), "services[0]", "only the keys"),
        (("    name: Doctolib", "    name: ''"), "services[0].name", "non-empty string"),
    ])
    def test_invalid(self, tmp_path: Path, edit: tuple[str, str], key: str, expected: str) -> None:
        """Each schema error names the file, the key and the expectation."""
        text = GOOD.replace(*edit)
        assert text != GOOD
        path = _write(tmp_path, text)
        with pytest.raises(ServicesError) as info:
            ServiceCatalogue.load(path)
        message = str(info.value)
        assert str(path) in message and key in message and expected in message

    def test_suffix_claimed_twice(self, tmp_path: Path) -> None:
        """Two services claiming one suffix are refused, naming both."""
        text = GOOD + GOOD.split("services:\n")[1].replace("slug: doctolib", "slug: doctolib-copy")
        with pytest.raises(ServicesError, match=r"services\[1\]\.suffixes.*already claimed by doctolib"):
            ServiceCatalogue.load(_write(tmp_path, text))

    def test_slug_twice(self, tmp_path: Path) -> None:
        """Two services with one slug are refused."""
        text = GOOD + GOOD.split("services:\n")[1].replace("[doctolib.fr]", "[doctolib.de]")
        with pytest.raises(ServicesError, match=r"services\[1\]\.slug: expected each slug once"):
            ServiceCatalogue.load(_write(tmp_path, text))

    def test_not_yaml(self, tmp_path: Path) -> None:
        """A file that is not YAML is refused with its path."""
        path = _write(tmp_path, "services: [unclosed\n")
        with pytest.raises(ServicesError, match="not valid YAML"):
            ServiceCatalogue.load(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is refused with its path."""
        with pytest.raises(ServicesError, match="cannot read"):
            ServiceCatalogue.load(tmp_path / "absent.yaml")

    def test_not_a_mapping(self, tmp_path: Path) -> None:
        """A list at the top level is refused."""
        with pytest.raises(ServicesError, match=r"\(top level\)"):
            ServiceCatalogue.load(_write(tmp_path, "- a\n"))
