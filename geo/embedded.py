"""The databases shipped inside the package (built by geo/build_data.py) and their provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
COUNTRY_FILE = DATA_DIR / "country.mmdb.gz"
ASN_FILE = DATA_DIR / "asn.table.gz"
AS_NAMES_FILE = DATA_DIR / "asnames.json.gz"
BUILD_FILE = DATA_DIR / "BUILD.json"

ATTRIBUTION = (
    "Embedded geolocation data, under the Creative Commons Attribution 4.0 licence "
    "(https://creativecommons.org/licenses/by/4.0/):\n"
    "- country: IP Geolocation by DB-IP (https://db-ip.com), IP to Country Lite;\n"
    "- ASN and AS names: RouteViews (https://www.routeviews.org), the NRO (https://www.nro.net) "
    "and DB-IP (https://db-ip.com), as merged by ip-location-db "
    "(https://github.com/sapics/ip-location-db)."
)


@dataclass(frozen=True, slots=True)
class Provenance:
    """What BUILD.json says about one embedded file."""

    source: str
    licence: str
    attribution: str
    build_time: datetime | None


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def provenance() -> dict[str, Provenance]:
    """Return BUILD.json's entries keyed by file name; empty if BUILD.json is missing or bad.

    A broken BUILD.json costs the metadata (source, date), never the look-ups.
    """
    try:
        manifest = json.loads(BUILD_FILE.read_text(encoding="utf-8"))
        entries = manifest["databases"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    result: dict[str, Provenance] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        result[entry["file"]] = Provenance(
            source=f"{entry.get('source_package')}@{entry.get('source_version')}",
            licence=str(entry.get("licence", "")),
            attribution=str(entry.get("attribution", "")),
            build_time=_parse_time(entry.get("build_time")),
        )
    return result
