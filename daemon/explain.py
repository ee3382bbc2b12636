"""`douane lookup`: everything douane decides about an address or a host name, with the evidence.

An address goes through the same look-ups as a flow (country and ASN databases, published range
files, provider registry). A host name is not resolved: douane does no network I/O outside
`douane update-db`, so a name is matched against the registry's domains and the service catalogue
only, and its location stays unknown.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from typing import Any, TextIO

from douane.geo.jurisdiction import Determination, Jurisdictions
from douane.geo.lookup import GeoDatabases
from douane.geo.services import ServicesError, default_catalogue

# RFC 1123 host name, at most 253 characters; an address is tried first.
_HOSTNAME = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
NO_RESOLUTION = (
    "host name not resolved (douane does no network I/O outside update-db): matched against the "
    "provider registry's domains and the service catalogue only; location unknown"
)


def _service_of(hostname: str) -> tuple[str | None, str | None]:
    try:
        service = default_catalogue().match(hostname)
    except ServicesError:
        return None, None
    return (service.slug, service.provider) if service else (None, None)


def explain(target: str, geo: GeoDatabases, engine: Jurisdictions) -> dict[str, Any]:
    """The full answer for one address or host name, as a JSON-ready mapping."""
    try:
        address = str(ipaddress.ip_address(target))
    except ValueError:
        address = None
    entry: dict[str, Any] = {"target": target, "address": None}
    if address is not None:
        answer = geo.lookup(address)
        country_db = next((db for db in geo.databases() if db.name == "country"), None)
        built = country_db.build_time.date().isoformat() if country_db and country_db.build_time else "?"
        source = f"country database {country_db.path} (built {built})" if country_db else "country database"
        found = engine.explain(address, answer.asn, answer.location_country, None, None,
                               answer.as_name, source)
        asn_evidence = {
            "field": "asn", "value": str(answer.asn), "reason": "longest prefix in the ASN database",
            "source": next((db.path for db in geo.databases() if db.name == "asn"), ""),
        }
        entry.update(kind="address", address=address, asn=answer.asn, as_name=answer.as_name, service=None)
        evidence = ([asn_evidence] if answer.asn is not None else [])
    elif _HOSTNAME.fullmatch(target):
        service, _ = _service_of(target)
        found = engine.explain("", None, None, target.lower(), service)
        entry.update(kind="hostname", asn=None, as_name=None, service=service, note=NO_RESOLUTION)
        evidence = []
        if service is not None:
            evidence.append({"field": "service", "value": service, "reason": "service catalogue suffix",
                             "source": str(default_catalogue().path)})
    else:
        return {"target": target, "kind": "invalid", "error": "neither an IP address nor a host name"}
    entry.update(_determination(found, engine))
    entry["evidence"] = evidence + [
        {"field": e.field, "value": e.value, "reason": e.reason, "source": e.source}
        for e in found.evidence
    ]
    return entry


def _determination(found: Determination, engine: Jurisdictions) -> dict[str, Any]:
    provider = engine.registry.providers.get(found.provider or "")
    return {
        "location_country": found.location_country,
        "location_zone": found.location_zone,
        "region": found.region,
        "range_service": found.range_service,
        "provider": found.provider,
        "provider_name": provider.name if provider else None,
        "parent": provider.parent if provider else None,
        "controller_country": found.controller_country,
        "controller_zone": found.controller_zone,
        "controller_weak": found.controller_weak,
        "exposure": list(found.exposure),
        "jurisdiction": found.jurisdiction,
        "dpf_certified": provider.dpf_certified if provider else None,
        "certifications": [
            {"scheme": c.scheme, "offer": c.offer, "date": c.date, "sources": list(c.sources)}
            for c in (provider.certifications if provider else ())
        ],
    }


def sources_used(geo: GeoDatabases, engine: Jurisdictions) -> dict[str, Any]:
    """The databases, tables and range files that answered, for the end of the output."""
    databases = {
        db.name: {
            "path": db.path,
            "built": db.build_time.date().isoformat() if db.build_time else None,
            "error": db.error,
        }
        for db in geo.databases()
    }
    return {
        "databases": databases,
        "registry": engine.registry.path,
        "range_files": [
            {"path": f.path, "format": f.format, "ranges": f.ranges, "version": f.version, "error": f.error}
            for f in engine.range_files
        ],
    }


def _text(entry: dict[str, Any], out: TextIO) -> None:
    out.write(f"{entry['target']}\n")
    if entry["kind"] == "invalid":
        out.write(f"  error:        {entry['error']}\n")
        return
    if entry["kind"] == "hostname":
        out.write(f"  note:         {entry['note']}\n")
    else:
        asn = f"AS{entry['asn']} {entry['as_name'] or ''}".rstrip() if entry["asn"] else "unknown"
        out.write(f"  asn:          {asn}\n")
    location = entry["location_country"] or "unknown"
    region = f", region {entry['region']}" if entry["region"] else ""
    out.write(f"  location:     {location} ({entry['location_zone']}{region})\n")
    if entry["service"] or entry["range_service"]:
        out.write(f"  service:      {entry['service'] or entry['range_service']}\n")
    if entry["provider"]:
        parent = f", parent {entry['parent']}" if entry["parent"] else ""
        name = f" ({entry['provider_name']}{parent})"
        out.write(f"  provider:     {entry['provider']}{name if entry['provider_name'] else ''}\n")
    else:
        out.write("  provider:     unknown\n")
    weak = " (weak guess)" if entry["controller_weak"] and entry["controller_country"] else ""
    out.write(f"  controller:   {entry['controller_country'] or 'unknown'} "
              f"({entry['controller_zone']}){weak}\n")
    out.write(f"  exposure:     {', '.join(entry['exposure']) or 'none'}\n")
    out.write(f"  jurisdiction: {entry['jurisdiction']}\n")
    if entry["dpf_certified"] is not None:
        out.write(f"  EU-US DPF:    {'certified' if entry['dpf_certified'] else 'not certified'}\n")
    for cert in entry["certifications"]:
        date = f", {cert['date']}" if cert["date"] else ""
        scheme = {"hds": "HDS", "secnumcloud": "SecNumCloud"}.get(cert["scheme"], cert["scheme"])
        out.write(f"  certified:    {scheme}: {cert['offer']}{date} ({cert['sources'][0]})\n")
    out.write("  evidence:\n")
    for item in entry["evidence"]:
        out.write(f"    {item['field']} = {item['value']}: {item['reason']} [{item['source']}]\n")


def run_lookup(targets: Sequence[str], geo: GeoDatabases, engine: Jurisdictions, as_json: bool,
               out: TextIO) -> None:
    """Print the answer for each target: text blocks, or one JSON object per target."""
    used = sources_used(geo, engine)
    for target in targets:
        entry = explain(target, geo, engine)
        if as_json:
            out.write(json.dumps({**entry, **used}, ensure_ascii=False) + "\n")
        else:
            _text(entry, out)
    if not as_json:
        out.write("answered by:\n")
        for name, db in used["databases"].items():
            state = f"error: {db['error']}" if db["error"] else f"built {db['built'] or '?'}"
            out.write(f"  {name}: {db['path']} ({state})\n")
        out.write(f"  provider registry: {used['registry']}\n")
        if not used["range_files"]:
            out.write("  range files: none (set geo.ranges_dir, or run douane update-db)\n")
        for f in used["range_files"]:
            state = f"error: {f['error']}" if f["error"] else f"{f['ranges']} ranges, version {f['version']}"
            out.write(f"  range file: {f['path']} ({f['format']}; {state})\n")
