"""Service catalogue: which online service a host name belongs to (`geo/services.yaml`).

Each entry maps domain suffixes to a service slug, the provider that runs it (a slug of the
provider registry) and an optional data-category hint (`health`, `school`). A host name matches
a suffix on an exact label boundary: `www.doctolib.fr` and `doctolib.fr` are Doctolib,
`evil-doctolib.fr` and `doctolib.fr.evil.com` are not. The longest matching suffix wins, so
`blob.core.windows.net` (Azure Storage) beats `windows.net` (Azure).

The file is validated when it is loaded, and the suffixes are compiled into one dict keyed by
suffix: a match strips one leading label at a time, so it costs one dict look-up per label.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from douane.geo.yaml_loader import safe_load

DEFAULT_SERVICES_FILE = Path(__file__).resolve().parent / "services.yaml"
CATEGORIES = frozenset({"health", "school"})
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# RFC 1123 host name labels, lower case; at least two labels (no bare top-level domain).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SUFFIX = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_SERVICE_KEYS = {"slug", "name", "provider", "category", "suffixes", "sources", "note"}
_SERVICE_REQUIRED = {"slug", "name", "provider", "suffixes", "sources"}


class ServicesError(ValueError):
    """The services file is invalid; the message names the file, the key and what was expected."""


@dataclass(frozen=True, slots=True)
class Service:
    """One service of the catalogue."""

    slug: str
    name: str
    provider: str
    category: str | None
    suffixes: tuple[str, ...]
    sources: tuple[str, ...]


def _fail(path: Path, key: str, expected: str, got: object) -> ServicesError:
    return ServicesError(f"{path}: {key}: expected {expected}, got {got!r}")


def _slug(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise _fail(path, key, "a slug of lower-case letters, digits and single hyphens", value)
    return value


def _service(path: Path, key: str, entry: object) -> Service:
    if not isinstance(entry, dict):
        raise _fail(path, key, "a mapping with slug, name, provider, suffixes, sources", entry)
    if unknown := set(entry) - _SERVICE_KEYS:
        raise _fail(path, key, f"only the keys {sorted(_SERVICE_KEYS)}", sorted(unknown))
    if missing := _SERVICE_REQUIRED - set(entry):
        raise _fail(path, key, f"the keys {sorted(_SERVICE_REQUIRED)}", f"missing {sorted(missing)}")
    slug = _slug(path, f"{key}.slug", entry["slug"])
    provider = _slug(path, f"{key}.provider", entry["provider"])
    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        raise _fail(path, f"{key}.name", "a non-empty string", name)
    if "note" in entry and not isinstance(entry["note"], str):
        raise _fail(path, f"{key}.note", "a string", entry["note"])
    category = entry.get("category")
    if category is not None and category not in CATEGORIES:
        raise _fail(path, f"{key}.category", f"one of {sorted(CATEGORIES)} or no key", category)
    suffixes = entry["suffixes"]
    if not isinstance(suffixes, list) or not suffixes:
        raise _fail(path, f"{key}.suffixes", "a non-empty list of domain suffixes", suffixes)
    for index, suffix in enumerate(suffixes):
        if not isinstance(suffix, str) or len(suffix) > 253 or not _SUFFIX.fullmatch(suffix):
            raise _fail(
                path, f"{key}.suffixes[{index}]",
                "a lower-case domain name of at least two labels, such as doctolib.fr", suffix,
            )
    sources = entry["sources"]
    if not isinstance(sources, list) or not sources:
        raise _fail(path, f"{key}.sources", "a non-empty list of https:// URLs", sources)
    for index, source in enumerate(sources):
        if not isinstance(source, str) or not source.startswith("https://") or " " in source:
            raise _fail(path, f"{key}.sources[{index}]", "an https:// URL citing the source", source)
    return Service(slug, name.strip(), provider, category, tuple(suffixes), tuple(sources))


class ServiceCatalogue:
    """The validated catalogue, compiled for look-ups by host name."""

    __slots__ = ("_by_slug", "_by_suffix", "path")

    def __init__(self, services: Mapping[str, Service], path: Path) -> None:
        """Build from validated services (use `load`); claims of one suffix twice must be refused
        before."""
        self.path = path
        self._by_slug = dict(services)
        self._by_suffix = {suffix: service for service in services.values() for suffix in service.suffixes}

    @classmethod
    def load(cls, path: Path | None = None) -> ServiceCatalogue:
        """Read and validate a services file (None: the one shipped with douane).

        Raises:
            ServicesError: the file cannot be read, is not YAML, breaks the schema, or two entries
                claim one slug or one suffix.
        """
        path = DEFAULT_SERVICES_FILE if path is None else path
        try:
            document: Any = safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ServicesError(f"{path}: cannot read it ({error.strerror or error})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ServicesError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(document, dict):
            raise _fail(path, "(top level)", "a mapping with version, services", document)
        if unknown := set(document) - {"version", "services"}:
            raise _fail(path, "(top level)", "only version, services", sorted(unknown))
        if document.get("version") != 1:
            raise _fail(path, "version", "1", document.get("version"))
        entries = document.get("services")
        if not isinstance(entries, list) or not entries:
            raise _fail(path, "services", "a non-empty list of services", entries)
        services: dict[str, Service] = {}
        owners: dict[str, str] = {}
        for index, entry in enumerate(entries):
            key = f"services[{index}]"
            service = _service(path, key, entry)
            if service.slug in services:
                raise _fail(path, f"{key}.slug", "each slug once", service.slug)
            for suffix in service.suffixes:
                if suffix in owners:
                    raise _fail(
                        path, f"{key}.suffixes", f"each suffix once (already claimed by {owners[suffix]})",
                        suffix,
                    )
                owners[suffix] = service.slug
            services[service.slug] = service
        return cls(services, path)

    def match(self, hostname: str) -> Service | None:
        """The service whose longest suffix ends `hostname` on a label boundary, or None.

        The name is compared case-insensitively and a trailing dot (fully qualified form) is
        ignored.
        """
        name = hostname.lower()
        if name.endswith("."):
            name = name[:-1]
        table = self._by_suffix
        while True:
            service = table.get(name)
            if service is not None:
                return service
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1 :]

    def get(self, slug: str) -> Service | None:
        """The service with this slug, or None."""
        return self._by_slug.get(slug)

    @property
    def slugs(self) -> frozenset[str]:
        """Every service slug (a bounded label set for metrics)."""
        return frozenset(self._by_slug)

    @property
    def providers(self) -> frozenset[str]:
        """Every provider slug the catalogue names."""
        return frozenset(service.provider for service in self._by_slug.values())

    def __iter__(self) -> Iterator[Service]:
        return iter(self._by_slug.values())

    def __len__(self) -> int:
        return len(self._by_slug)


@functools.cache
def default_catalogue() -> ServiceCatalogue:
    """The catalogue shipped with douane, loaded once."""
    return ServiceCatalogue.load()
