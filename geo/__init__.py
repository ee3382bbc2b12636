"""Where an address goes: ASN, AS name, country and legal zone, from embedded or configured data."""

from douane.geo.lookup import (
    ATTRIBUTION,
    UNKNOWN_ANSWER,
    DatabaseInfo,
    GeoAnswer,
    GeoConfig,
    GeoDatabases,
    check_database_files,
)
from douane.geo.zones import ZONES, Zone, ZonesError, load_zones, location_zone

__all__ = [
    "ATTRIBUTION",
    "UNKNOWN_ANSWER",
    "ZONES",
    "DatabaseInfo",
    "GeoAnswer",
    "GeoConfig",
    "GeoDatabases",
    "Zone",
    "ZonesError",
    "check_database_files",
    "load_zones",
    "location_zone",
]
