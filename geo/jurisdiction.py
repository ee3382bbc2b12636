"""Who controls a destination and which laws reach it: provider, controller, exposure, jurisdiction.

DESIGN.md's model, per destination:

- **location**: where the server stands. The country database's answer, refined by a cloud
  region's country when a published range file places the address in a region (the provider's own
  declaration beats geolocation).
- **controller**: the company that operates the destination and can be compelled. Found, in order
  of strength, from the published range files, the AS number in the provider registry, then the
  hostname's domain suffix or the service. One exception to that order: a joint venture that runs
  its supplier's technology (S3NS on Google, Bleu on Microsoft) shares its supplier's network, so a
  name of the joint venture refines a range or AS match of the supplier. An AS the registry does not
  know gives ``provider: "other"`` with a *weak* controller guess: the country in the AS name when
  it carries one (``"OVH, FR"`` in RIPE-style name files), else the location country.
- **exposure**: the laws of the registry that reach the controller (for `other`, the laws of the
  guessed country).
- **jurisdiction**: ``eu`` when location and controller are both in the EEA or an adequate country
  and no exposure applies; otherwise the worst of location, controller and exposure in the order
  ``eu < unknown < third < us < ru < cn``.

  The order: a named regime (`us`, `ru`, `cn`) is worse than a generic third country because a
  known law compels the controller to hand data over regardless of where it stands; among them,
  the US one comes first because its 2023 adequacy decision (DPF) recognises redress and oversight
  for certified organisations, which neither Russian (SORM: access without a court order in
  practice) nor Chinese law (National Intelligence Law, art. 7: a duty to assist, without limit)
  offers; `cn` last because its duty applies to every organisation and citizen. `unknown` is above
  `eu` so that a flow is never declared `eu` on half an answer.

`explain` gives an answer with its evidence (which database, range file, registry entry and source
URL), for `douane lookup`; `determine`, for flows, gives the same answer without it and is cached per
network (range, AS, country, name and service), so the per-flow work is one dictionary look-up.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from douane.geo.providers import OTHER, Provider, Registry, default_registry
from douane.geo.ranges import (
    CloudRange,
    RangeFile,
    RangeTable,
    Regions,
    default_regions,
    load_ranges_dir,
)
from douane.geo.services import ServicesError, default_catalogue
from douane.geo.zones import ADEQUATE, EEA, UNKNOWN, Zone, Zones, default_zones

JURISDICTION_ORDER: tuple[str, ...] = ("eu", "unknown", "third", "us", "ru", "cn")
_RANK = {name: rank for rank, name in enumerate(JURISDICTION_ORDER)}
# Countries whose law the registry names as an extraterritorial regime, and their jurisdiction.
_NAMED = {"US": "us", "CN": "cn", "RU": "ru"}
# "OVH, FR" (RIPE's asnames.txt as converted by pyasn): the AS's registered country at the end.
_AS_NAME_COUNTRY = re.compile(r",\s*([A-Z]{2})\s*$")

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why one field has its value: what said so, and where that can be checked."""

    field: str
    value: str
    reason: str
    source: str


@dataclass(frozen=True, slots=True)
class Determination:
    """Location, controller, exposure and jurisdiction of one destination, with the evidence.

    Attributes:
        provider: a registry slug, `other` (an AS the registry does not know) or None (no AS).
        controller_weak: the controller country is a guess (always so for `other`).
        location_country, location_zone: after refinement by a cloud region.
        region, range_service: from the published range file that matched, if any.
    """

    provider: str | None
    controller_country: str | None
    controller_zone: Zone
    controller_weak: bool
    exposure: tuple[str, ...]
    jurisdiction: str
    location_country: str | None
    location_zone: Zone
    region: str | None
    range_service: str | None
    evidence: tuple[Evidence, ...]


def side_jurisdiction(country: str | None, zone: str) -> str:
    """The jurisdiction one side (location or controller) stands for: eu, us, cn, ru, third, unknown."""
    if zone in (EEA, ADEQUATE):
        return "eu"
    if country is None or zone == UNKNOWN:
        return UNKNOWN
    return _NAMED.get(country, "third")


def worst(*jurisdictions: str) -> str:
    """The worst of several jurisdictions in JURISDICTION_ORDER (unknown values count as unknown)."""
    known = [j if j in _RANK else UNKNOWN for j in jurisdictions]
    return max(known, key=_RANK.__getitem__, default=UNKNOWN)


class Jurisdictions:
    """Decides provider, controller, exposure and jurisdiction per destination; built with no I/O.

    Args:
        registry: the provider registry.
        ranges: the compiled published ranges (empty when no range folder is configured).
        regions: cloud region → country.
        zones: the legal zones table.
        range_files: the range files loaded, for `douane lookup` and `douane check`.
        cache_size: destinations whose answer is remembered (LRU).
    """

    def __init__(
        self,
        registry: Registry,
        ranges: RangeTable,
        regions: Regions,
        zones: Zones,
        range_files: tuple[RangeFile, ...] = (),
        cache_size: int = 65536,
    ) -> None:
        self.registry = registry
        self.ranges = ranges
        self.regions = regions
        self.zones = zones
        self.range_files = range_files
        self._suppliers = frozenset(p.supplier for p in registry.providers.values() if p.supplier)
        self._laws_by_country: dict[str, tuple[str, ...]] = {}
        for law in registry.laws.values():
            self._laws_by_country[law.country] = (*self._laws_by_country.get(law.country, ()), law.slug)
        # A flow's answer depends on its address only through the published range that holds it:
        # cached per (range, AS, country, name, service, AS name), the addresses of one network
        # share one answer, worked out once (about 5 µs) instead of once per address.
        self._decide: Callable[..., Determination] = functools.lru_cache(maxsize=cache_size)(
            self._determine
        )
        # The range of an address, per address: parsing it costs about 2 µs. Without range files
        # (the default) there is nothing to find.
        self._range_of: Callable[[str], CloudRange | None] = functools.lru_cache(maxsize=cache_size)(
            self._range
        )
        self._has_ranges = len(ranges) > 0

    def determine(
        self,
        address: str,
        asn: int | None,
        country: str | None,
        hostname: str | None = None,
        service: str | None = None,
        as_name: str | None = None,
    ) -> Determination:
        """Provider, controller, exposure and jurisdiction of a destination, without the evidence
        (for flows; cached)."""
        found = self._range_of(address) if self._has_ranges else None
        return self._decide(found, asn, country, hostname, service, as_name)

    def explain(
        self,
        address: str,
        asn: int | None,
        country: str | None,
        hostname: str | None = None,
        service: str | None = None,
        as_name: str | None = None,
        country_source: str = "country database",
    ) -> Determination:
        """Like `determine`, with the evidence of each answer (not cached: for `douane lookup`)."""
        return self._determine(self._range(address), asn, country, hostname, service, as_name,
                               country_source, explain=True)

    @property
    def provider_labels(self) -> frozenset[str]:
        """The values the `provider` metric label may take: registry slugs, `other`, `unknown`."""
        return self.registry.slugs | {OTHER, UNKNOWN}

    def problems(self) -> list[str]:
        """Range files that could not be used (for `douane check`)."""
        return [f"range file {f.path}: {f.error}" for f in self.range_files if f.error is not None]

    def _determine(
        self,
        found: CloudRange | None,
        asn: int | None,
        country: str | None,
        hostname: str | None = None,
        service: str | None = None,
        as_name: str | None = None,
        country_source: str = "country database",
        explain: bool = False,
    ) -> Determination:
        # Evidence is for `douane lookup` (explain=True); flows need only the answer, and building
        # a dozen strings per destination would double the cost of a cold look-up.
        evidence: list[Evidence] | None = [] if explain else None
        zones = self.zones
        location_country, location_zone = country, zones.zone(country)
        if country is not None and evidence is not None:
            evidence.append(Evidence("location_country", country, "geolocation of the address",
                                     country_source))

        region = found.region if found else None
        if found is not None:
            if evidence is not None:
                what = ", ".join(x for x in (found.region, found.service) if x) or "no region"
                evidence.append(Evidence("provider", found.provider,
                                         f"published range {found.network} ({what})", found.source))
            region_country = self.regions.country(found.provider, found.region)
            if region_country is not None:
                if evidence is not None:
                    note = "" if region_country == country else f" (geolocation said {country or 'nothing'})"
                    evidence.append(Evidence(
                        "location_country", region_country, f"cloud region {found.region}{note}",
                        self.regions.sources.get(found.provider, ""),
                    ))
                location_country, location_zone = region_country, zones.zone(region_country)

        provider = self._controller(found, asn, hostname, service, evidence)
        if provider is not None:
            controller_country: str | None = provider.controller_country
            exposure = provider.exposure
            slug: str | None = provider.slug
            if evidence is not None:
                parent = f" (parent: {provider.parent})" if provider.parent else ""
                seat = f"seat of {provider.name}{parent}"
                evidence.append(Evidence("controller_country", provider.controller_country, seat,
                                         provider.sources["company"][0]))
        elif asn is not None:
            slug = OTHER
            controller_country, basis = self._guess_country(as_name, location_country)
            exposure = self._laws_by_country.get(controller_country or "", ())
            if evidence is not None:
                evidence.append(Evidence("provider", OTHER, f"AS{asn} is not in the provider registry",
                                         self.registry.path))
            if controller_country is not None and evidence is not None:
                evidence.append(Evidence("controller_country", controller_country,
                                         f"weak guess: {basis}", "registry: no entry"))
        else:
            slug, controller_country, exposure = None, None, ()
        if evidence is not None:
            for law_slug in exposure:
                law = self.registry.laws[law_slug]
                evidence.append(Evidence("exposure", law_slug, law.name, law.sources[0]))

        controller_zone = zones.zone(controller_country)
        sides = (
            side_jurisdiction(location_country, location_zone),
            side_jurisdiction(controller_country, controller_zone),
            *(_NAMED.get(self.registry.laws[law].country, "third") for law in exposure),
        )
        jurisdiction = worst(*sides)
        if evidence is not None:
            evidence.append(Evidence(
                "jurisdiction", jurisdiction,
                f"worst of location {sides[0]}, controller {sides[1]}"
                + (f", exposure {'/'.join(sorted(set(sides[2:])))}" if exposure else "")
                + f" (order {' < '.join(JURISDICTION_ORDER)})",
                "DESIGN.md; README 'Jurisdiction'",
            ))
        return Determination(
            provider=slug,
            controller_country=controller_country,
            controller_zone=controller_zone,
            controller_weak=slug == OTHER,
            exposure=tuple(sorted(exposure)),
            jurisdiction=jurisdiction,
            location_country=location_country,
            location_zone=location_zone,
            region=region,
            range_service=found.service if found else None,
            evidence=tuple(evidence or ()),
        )

    def _range(self, address: str) -> CloudRange | None:
        if not len(self.ranges):
            return None
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        return self.ranges.lookup(parsed)

    def _controller(
        self,
        found: CloudRange | None,
        asn: int | None,
        hostname: str | None,
        service: str | None,
        evidence: list[Evidence] | None,
    ) -> Provider | None:
        registry = self.registry
        chosen: Provider | None = None
        if found is not None:
            chosen = registry.providers.get(found.provider)
        by_asn = registry.by_asn(asn)
        if by_asn is not None:
            if evidence is not None:
                sub = by_asn.subsidiary_of(asn) if asn is not None else None
                where = f", subsidiary {sub.name} ({sub.country}) of {by_asn.name}" if sub else ""
                note = "" if chosen is None or chosen is by_asn else f"; the range's {chosen.slug} wins"
                evidence.append(Evidence("provider", by_asn.slug, f"AS{asn} in the registry{where}{note}",
                                         by_asn.sources["asns"][0]))
            chosen = chosen or by_asn
        if chosen is not None and evidence is None and chosen.slug not in self._suppliers:
            # A network match is final unless a joint venture runs on that network: skip names.
            return chosen
        named: Provider | None = None
        host = registry.by_hostname(hostname)
        if host is not None:
            named = host[0]
            if evidence is not None:
                evidence.append(Evidence("provider", named.slug, f"hostname {hostname} under {host[1]}",
                                         named.sources["domains"][0]))
        by_service = registry.by_service(service)
        if by_service is not None:
            named = named or by_service
            if evidence is not None:
                evidence.append(Evidence("provider", by_service.slug, f"service {service}",
                                         by_service.sources["company"][0]))
        if named is not None and chosen is not None and named.supplier == chosen.slug:
            if evidence is not None:
                evidence.append(Evidence("provider", named.slug,
                                         f"{named.name} runs {chosen.slug}'s technology under its own "
                                         "control: its name refines the network match",
                                         named.sources["company"][0]))
            return named
        return chosen if chosen is not None else named

    @staticmethod
    def _guess_country(as_name: str | None, location: str | None) -> tuple[str | None, str]:
        if as_name and (match := _AS_NAME_COUNTRY.search(as_name)):
            return match.group(1), f"country in the AS name {as_name!r}"
        if location is not None:
            return location, "the address's location stands for the AS's country (no registration data)"
        return None, ""


def load_jurisdictions(ranges_dir: Path | None = None, cache_size: int = 65536) -> Jurisdictions:
    """Build the engine from the shipped registry, regions, zones and service catalogue, and a
    folder of range files.

    Reads files (the ranges folder): call it at start-up and again to reload (SIGHUP). A bad range
    file is reported by `problems()` and skipped; a bad shipped table raises (a packaging error).
    """
    files: list[RangeFile] = []
    ranges: list[CloudRange] = []
    if ranges_dir is not None:
        files, ranges = load_ranges_dir(ranges_dir)
    registry = default_registry()
    # The catalogue names the provider of each service (geo/services.yaml): a flow's `service`
    # can then name its controller when neither range nor AS does. A broken catalogue is
    # reported by the identity stage, which loads the same file.
    with contextlib.suppress(ServicesError):
        registry = registry.with_services({s.slug: s.provider for s in default_catalogue()})
    return Jurisdictions(
        registry, RangeTable(ranges), default_regions(), default_zones(), tuple(files), cache_size,
    )


def make_jurisdiction_stage(engine: Jurisdictions) -> Callable[[Record], Record]:
    """A pipeline stage filling provider, controller_*, exposure, jurisdiction (and refining location).

    Runs after the geo stage (it reads `asn` and `location_country`) and uses `hostname`/`service`
    when an earlier stage filled them. Cached per network by the engine (`Jurisdictions.determine`).
    """
    determine = engine.determine

    def stage(record: Record) -> Record:
        direction = record["direction"]
        if direction == "internal":
            return record
        remote = record["src"] if direction == "inbound" else record["dst"]
        # A resolver flow's name is the question it carried, not who runs the resolver.
        hostname = record["hostname"] if record.get("hostname_source") != "dns_query" else None
        answer = determine(remote, record["asn"], record["location_country"], hostname,
                           record["service"], record["as_name"])
        record["location_country"] = answer.location_country
        record["location_zone"] = answer.location_zone
        record["provider"] = answer.provider
        record["controller_country"] = answer.controller_country
        record["controller_zone"] = answer.controller_zone
        # A fresh list per record: sinks may keep or change it; the cached answer must not move.
        record["exposure"] = list(answer.exposure)
        record["jurisdiction"] = answer.jurisdiction
        return record

    return stage
