"""The provider registry: which company controls a destination, its country and the laws that reach it.

The registry is data (`providers.yaml`, every fact with its sources), validated when it is loaded and
compiled into look-up tables (AS number → provider, domain suffix → provider, service → provider), so
that the work per destination is only dictionary look-ups (STYLE.md: decide once, run cheap).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from douane.geo.yaml_loader import safe_load

DEFAULT_PROVIDERS_FILE = Path(__file__).resolve().parent / "providers.yaml"

# Label values the pipeline uses besides the registry's slugs: an AS the registry does not know, and
# no answer at all. A provider may not take them as its slug.
OTHER = "other"
UNKNOWN = "unknown"
RESERVED_SLUGS = frozenset({OTHER, UNKNOWN})
CERTIFICATION_SCHEMES = ("hds", "secnumcloud")

_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_CODE = re.compile(r"[A-Z]{2}")
_DATE = re.compile(r"\d{4}(?:-\d{2}(?:-\d{2})?)?")
# A DNS suffix: lower-case labels of letters, digits and hyphens (RFC 1123), at least one label.
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_ASN = 2**32 - 1

_PROVIDER_KEYS = {
    "slug", "name", "parent", "controller_country", "exposure", "supplier", "asns", "subsidiaries",
    "as_names", "domains", "dpf", "certifications", "sources",
}
_PROVIDER_REQUIRED = {"slug", "name", "controller_country", "exposure", "asns", "sources"}
_SOURCE_KEYS = {"company", "asns", "domains"}


class ProvidersError(ValueError):
    """The registry file is invalid; the message names the file, the key and what was expected."""


@dataclass(frozen=True, slots=True)
class Law:
    """An extraterritorial law that can compel a controller (an `exposure` slug)."""

    slug: str
    name: str
    country: str
    summary: str
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Certification:
    """A public certification: French HDS or ANSSI SecNumCloud, for a named offer."""

    scheme: str
    offer: str
    date: str | None
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Subsidiary:
    """A subsidiary with ASNs of its own; its addresses belong to the parent provider."""

    name: str
    country: str
    asns: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Provider:
    """One controlling company of the registry."""

    slug: str
    name: str
    controller_country: str
    exposure: tuple[str, ...]
    asns: tuple[int, ...]
    sources: Mapping[str, tuple[str, ...]]
    parent: str | None = None
    supplier: str | None = None
    subsidiaries: tuple[Subsidiary, ...] = ()
    as_names: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    dpf_certified: bool | None = None
    dpf_sources: tuple[str, ...] = ()
    certifications: tuple[Certification, ...] = ()

    def all_asns(self) -> tuple[int, ...]:
        """The provider's own ASNs and its subsidiaries'."""
        return self.asns + tuple(asn for sub in self.subsidiaries for asn in sub.asns)

    def subsidiary_of(self, asn: int) -> Subsidiary | None:
        """The subsidiary that announces `asn`, None when the provider itself does."""
        return next((sub for sub in self.subsidiaries if asn in sub.asns), None)


@dataclass(frozen=True)
class Registry:
    """The validated registry with its look-up tables."""

    providers: Mapping[str, Provider]
    laws: Mapping[str, Law]
    path: str
    _by_asn: dict[int, Provider] = field(repr=False, default_factory=dict)
    _by_domain: dict[str, Provider] = field(repr=False, default_factory=dict)
    _by_service: dict[str, Provider] = field(repr=False, default_factory=dict)

    @property
    def slugs(self) -> frozenset[str]:
        """Every provider slug (the bounded set of the `provider` metric label, with other/unknown)."""
        return frozenset(self.providers)

    def by_asn(self, asn: int | None) -> Provider | None:
        """The provider announcing `asn` (itself or through a subsidiary), None if not registered."""
        return self._by_asn.get(asn) if asn is not None else None

    def by_hostname(self, hostname: str | None) -> tuple[Provider, str] | None:
        """The provider whose domain suffix matches `hostname` on a label boundary, and the suffix.

        The longest suffix wins (`blob.core.windows.net` before `windows.net`), so a more specific
        entry can claim a name under another provider's domain.
        """
        if not hostname:
            return None
        labels = hostname.strip().rstrip(".").lower().split(".")
        for index in range(len(labels)):
            suffix = ".".join(labels[index:])
            provider = self._by_domain.get(suffix)
            if provider is not None:
                return provider, suffix
        return None

    def by_service(self, service: str | None) -> Provider | None:
        """The provider operating a service of the catalogue (see `with_services`)."""
        return self._by_service.get(service) if service else None

    def with_services(self, services: Mapping[str, str]) -> Registry:
        """A copy that also maps these service slugs to provider slugs (the service catalogue's).

        Unknown provider slugs in `services` are ignored: the catalogue may name companies the
        registry does not list (they stay `other`).
        """
        table = dict(self._by_service)
        for service, slug in services.items():
            if slug in self.providers:
                table[service] = self.providers[slug]
        return Registry(self.providers, self.laws, self.path, self._by_asn, self._by_domain, table)


def _fail(path: Path, key: str, expected: str, got: object) -> ProvidersError:
    shown = repr(got)
    return ProvidersError(f"{path}: {key}: expected {expected}, got {shown[:120]}")


def _urls(path: Path, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(path, key, "a non-empty list of https:// URLs", value)
    for index, url in enumerate(value):
        if not isinstance(url, str) or not url.startswith("https://") or " " in url:
            raise _fail(path, f"{key}[{index}]", "an https:// URL", url)
    return tuple(value)


def _text(path: Path, key: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, "a non-empty string", value)
    return value


def _country(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        raise _fail(path, key, "an ISO 3166-1 alpha-2 code such as FR (quote NO)", value)
    return value


def _asns(path: Path, key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _fail(path, key, "a list of AS numbers", value)
    for index, asn in enumerate(value):
        if isinstance(asn, bool) or not isinstance(asn, int) or not 0 < asn <= _MAX_ASN:
            raise _fail(path, f"{key}[{index}]", "an AS number between 1 and 4294967295", asn)
    if len(set(value)) != len(value):
        raise _fail(path, key, "each AS number once", value)
    return tuple(value)


def _words(path: Path, key: str, value: object, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(path, key, f"a list of {what}", value)
    for index, item in enumerate(value):
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise _fail(path, f"{key}[{index}]", what, item)
    return tuple(value)


def _date(path: Path, key: str, value: object) -> str | None:
    # YAML reads 2019 as an int, 2018-11 as a string and 2018-11-05 as a date: accept the three.
    if value is None:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _DATE.fullmatch(text):
        raise _fail(path, key, "a date written YYYY, YYYY-MM or YYYY-MM-DD", value)
    return text


def _law(path: Path, key: str, entry: object) -> Law:
    if not isinstance(entry, dict) or set(entry) != {"slug", "name", "country", "summary", "sources"}:
        raise _fail(path, key, "a mapping with exactly slug, name, country, summary, sources", entry)
    slug = entry["slug"]
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise _fail(path, f"{key}.slug", "a lower-case slug such as us-cloud-act", slug)
    return Law(
        slug=slug,
        name=str(_text(path, f"{key}.name", entry["name"])),
        country=_country(path, f"{key}.country", entry["country"]),
        summary=str(_text(path, f"{key}.summary", entry["summary"])),
        sources=_urls(path, f"{key}.sources", entry["sources"]),
    )


def _certification(path: Path, key: str, entry: object) -> Certification:
    if not isinstance(entry, dict) or not {"scheme", "offer", "sources"} <= set(entry) or (
        set(entry) - {"scheme", "offer", "date", "sources"}
    ):
        raise _fail(path, key, "a mapping with scheme, offer, sources and optionally date", entry)
    if entry["scheme"] not in CERTIFICATION_SCHEMES:
        raise _fail(path, f"{key}.scheme", "one of " + ", ".join(CERTIFICATION_SCHEMES), entry["scheme"])
    return Certification(
        scheme=entry["scheme"],
        offer=str(_text(path, f"{key}.offer", entry["offer"])),
        date=_date(path, f"{key}.date", entry.get("date")),
        sources=_urls(path, f"{key}.sources", entry["sources"]),
    )


def _subsidiary(path: Path, key: str, entry: object) -> Subsidiary:
    if not isinstance(entry, dict) or set(entry) != {"name", "country", "asns"}:
        raise _fail(path, key, "a mapping with exactly name, country, asns", entry)
    asns = _asns(path, f"{key}.asns", entry["asns"])
    if not asns:
        raise _fail(path, f"{key}.asns", "at least one AS number (else leave the subsidiary out)", [])
    return Subsidiary(
        name=str(_text(path, f"{key}.name", entry["name"])),
        country=_country(path, f"{key}.country", entry["country"]),
        asns=asns,
    )


def _provider(path: Path, key: str, entry: object, laws: Mapping[str, Law]) -> Provider:
    if not isinstance(entry, dict):
        raise _fail(path, key, "a mapping describing one provider", entry)
    if unknown := set(entry) - _PROVIDER_KEYS:
        raise _fail(path, key, f"only the keys {sorted(_PROVIDER_KEYS)}", sorted(unknown))
    if missing := _PROVIDER_REQUIRED - set(entry):
        raise _fail(path, key, f"the keys {sorted(_PROVIDER_REQUIRED)}", f"missing {sorted(missing)}")
    slug = entry["slug"]
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug) or slug in RESERVED_SLUGS:
        raise _fail(path, f"{key}.slug", "a lower-case slug such as ovhcloud (not other/unknown)", slug)
    exposure = _words(path, f"{key}.exposure", entry["exposure"], _SLUG, "a law slug")
    for index, law in enumerate(exposure):
        if law not in laws:
            raise _fail(path, f"{key}.exposure[{index}]", "a law listed under `laws`", law)
    subsidiaries = entry.get("subsidiaries", [])
    if not isinstance(subsidiaries, list):
        raise _fail(path, f"{key}.subsidiaries", "a list of subsidiaries", subsidiaries)
    domains = _words(path, f"{key}.domains", entry.get("domains", []), _DOMAIN, "a lower-case domain")
    asns = _asns(path, f"{key}.asns", entry["asns"])
    subs = tuple(
        _subsidiary(path, f"{key}.subsidiaries[{i}]", sub) for i, sub in enumerate(subsidiaries)
    )

    sources = entry["sources"]
    if not isinstance(sources, dict) or "company" not in sources:
        raise _fail(path, f"{key}.sources", "a mapping with company (and asns, domains) URL lists",
                    sources)
    if unknown := set(sources) - _SOURCE_KEYS:
        raise _fail(path, f"{key}.sources", f"only the keys {sorted(_SOURCE_KEYS)}", sorted(unknown))
    # Every fact with a source: the ASNs and the domains need theirs as soon as there are any.
    if (asns or subs) and "asns" not in sources:
        raise _fail(path, f"{key}.sources.asns", "URLs for the AS numbers", None)
    if domains and "domains" not in sources:
        raise _fail(path, f"{key}.sources.domains", "URLs for the domains", None)
    cited = {name: _urls(path, f"{key}.sources.{name}", urls) for name, urls in sources.items()}

    dpf = entry.get("dpf")
    dpf_certified: bool | None = None
    dpf_sources: tuple[str, ...] = ()
    if dpf is not None:
        if not isinstance(dpf, dict) or set(dpf) != {"certified", "sources"} or not isinstance(
            dpf["certified"], bool
        ):
            raise _fail(path, f"{key}.dpf", "a mapping with certified (true/false) and sources", dpf)
        dpf_certified = dpf["certified"]
        dpf_sources = _urls(path, f"{key}.dpf.sources", dpf["sources"])
    certifications = entry.get("certifications", [])
    if not isinstance(certifications, list):
        raise _fail(path, f"{key}.certifications", "a list of certifications", certifications)
    supplier = entry.get("supplier")
    if supplier is not None and (not isinstance(supplier, str) or not _SLUG.fullmatch(supplier)):
        raise _fail(path, f"{key}.supplier", "the slug of another provider", supplier)
    as_names = entry.get("as_names", [])
    if not isinstance(as_names, list) or not all(isinstance(w, str) and w for w in as_names):
        raise _fail(path, f"{key}.as_names", "a list of words", as_names)

    return Provider(
        slug=slug,
        name=str(_text(path, f"{key}.name", entry["name"])),
        parent=_text(path, f"{key}.parent", entry.get("parent"), optional=True),
        controller_country=_country(path, f"{key}.controller_country", entry["controller_country"]),
        exposure=tuple(sorted(exposure)),
        supplier=supplier,
        asns=asns,
        subsidiaries=subs,
        as_names=tuple(w.lower() for w in as_names),
        domains=domains,
        dpf_certified=dpf_certified,
        dpf_sources=dpf_sources,
        certifications=tuple(
            _certification(path, f"{key}.certifications[{i}]", c) for i, c in enumerate(certifications)
        ),
        sources=cited,
    )


def parse_registry(document: Any, path: Path) -> Registry:
    """Validate a parsed registry document and compile its look-up tables.

    Raises:
        ProvidersError: the document breaks the expected structure; the message names the key.
    """
    if not isinstance(document, dict):
        raise _fail(path, "(top level)", "a mapping with version, laws, providers", document)
    if unknown := set(document) - {"version", "laws", "providers"}:
        raise _fail(path, "(top level)", "only version, laws, providers", sorted(unknown))
    if document.get("version") != 1:
        raise _fail(path, "version", "1", document.get("version"))
    raw_laws = document.get("laws")
    if not isinstance(raw_laws, list) or not raw_laws:
        raise _fail(path, "laws", "a non-empty list of laws", raw_laws)
    laws: dict[str, Law] = {}
    for index, raw in enumerate(raw_laws):
        law = _law(path, f"laws[{index}]", raw)
        if law.slug in laws:
            raise _fail(path, f"laws[{index}].slug", "each law once", law.slug)
        laws[law.slug] = law

    raw_providers = document.get("providers")
    if not isinstance(raw_providers, list) or not raw_providers:
        raise _fail(path, "providers", "a non-empty list of providers", raw_providers)
    providers: dict[str, Provider] = {}
    by_asn: dict[int, Provider] = {}
    by_domain: dict[str, Provider] = {}
    for index, raw in enumerate(raw_providers):
        key = f"providers[{index}]"
        provider = _provider(path, key, raw, laws)
        if provider.slug in providers:
            raise _fail(path, f"{key}.slug", "a slug no other provider has", provider.slug)
        providers[provider.slug] = provider
        for asn in provider.all_asns():
            if (holder := by_asn.get(asn)) is not None:
                raise _fail(path, f"{key}.asns", f"AS numbers no other provider lists ({holder.slug} "
                            f"lists AS{asn})", asn)
            by_asn[asn] = provider
        for domain in provider.domains:
            if (holder := by_domain.get(domain)) is not None and holder is not provider:
                raise _fail(path, f"{key}.domains", f"domains no other provider lists ({holder.slug})",
                            domain)
            by_domain[domain] = provider
    for index, provider in enumerate(providers.values()):
        if provider.supplier is not None and (
            provider.supplier not in providers or provider.supplier == provider.slug
        ):
            raise _fail(path, f"providers[{index}].supplier", "the slug of another provider",
                        provider.supplier)
    return Registry(providers, laws, str(path), by_asn, by_domain)


def load_registry(path: Path = DEFAULT_PROVIDERS_FILE) -> Registry:
    """Read and validate a registry file.

    Raises:
        ProvidersError: the file cannot be read, is not YAML, or breaks the expected structure.
    """
    try:
        document: Any = safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ProvidersError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ProvidersError(f"{path}: not valid YAML ({error})") from None
    return parse_registry(document, path)


@functools.cache
def default_registry() -> Registry:
    """The registry shipped with douane, loaded once (the file is part of the package)."""
    return load_registry(DEFAULT_PROVIDERS_FILE)
