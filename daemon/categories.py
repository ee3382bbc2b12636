"""What a flow carries: data categories with the evidence for each (DESIGN.md "data category").

A flow's `data_categories` maps a category to the *names* of its evidence, never to a value:
`{"health": ["zone:pacs", "protocol:dicom", "identifier:nir"]}`. Stages here add the evidence known
from configuration and the catalogue; inspection adds protocols and identifiers seen in the payload.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from douane.daemon.config import ZoneConfig
from douane.daemon.pipeline import Record, Stage

CATEGORY_ORDER = ("health", "school", "personal")


def add_evidence(record: Record, category: str, evidence: str) -> None:
    """Adds one piece of evidence for a category, once, keeping categories in a stable order."""
    categories: dict[str, list[str]] = record["data_categories"]
    names = categories.setdefault(category, [])
    if evidence not in names:
        names.append(evidence)
    if len(categories) > 1:
        record["data_categories"] = {
            c: categories[c] for c in sorted(categories, key=_category_rank)
        }


def _category_rank(category: str) -> int:
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


class ZoneMatcher:
    """Which configured zone an internal address belongs to; the most specific network wins."""

    def __init__(self, zones: Iterable[ZoneConfig]) -> None:
        entries = []
        for zone in zones:
            for text in zone.networks:
                net = ipaddress.ip_network(text, strict=False)
                entries.append((net.prefixlen, net.version, int(net.network_address),
                                int(net.netmask), zone))
        # Longest prefix first, so the first hit is the most specific zone.
        entries.sort(key=lambda e: -e[0])
        self._entries = [(version, network, mask, zone) for _, version, network, mask, zone in entries]
        self._cache: dict[str, ZoneConfig | None] = {}

    def __bool__(self) -> bool:
        return bool(self._entries)

    def zone_of(self, address: str) -> ZoneConfig | None:
        known = self._cache.get(address, False)
        if known is not False:
            return known  # type: ignore[return-value]
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return None
        value = int(parsed)
        found = None
        for version, network, mask, zone in self._entries:
            if version == parsed.version and value & mask == network:
                found = zone
                break
        if len(self._cache) >= 65536:
            self._cache.clear()
        self._cache[address] = found
        return found


def zone_stage(zones: Iterable[ZoneConfig]) -> Stage:
    """Fills `zone` (the internal endpoint's zone) and the categories the zone holds (`zone:NAME`)."""
    matcher = ZoneMatcher(zones)

    def stage(record: Record) -> Record:
        if not matcher:
            return record
        direction = record["direction"]
        if direction == "outbound":
            zone = matcher.zone_of(record["src"])
        elif direction == "inbound":
            zone = matcher.zone_of(record["dst"])
        elif direction == "internal":
            zone = matcher.zone_of(record["src"]) or matcher.zone_of(record["dst"])
        else:
            zone = None
        if zone is not None:
            record["zone"] = zone.name
            for category in zone.categories:
                add_evidence(record, category, f"zone:{zone.name}")
        return record

    return stage


def service_category_stage(catalogue: Any) -> Stage:
    """A service the catalogue ties to a category (Doctolib: health) adds it, as `service:SLUG`."""

    def stage(record: Record) -> Record:
        slug = record["service"]
        if slug is not None:
            service = catalogue.get(slug)
            if service is not None and service.category is not None:
                add_evidence(record, service.category, f"service:{slug}")
        return record

    return stage
