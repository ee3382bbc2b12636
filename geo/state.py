"""The state directory: fresh databases swapped in by `douane update-db`, preferred over the embedded ones.

Layout (written only by geo/update.py)::

    STATE_DIR/current -> gen-20261128T100000Z-1a2b/     a symbolic link, replaced atomically
    STATE_DIR/gen-.../country.mmdb[.gz|.xz]            MaxMind DB (DB-IP or GeoLite2 schema)
    STATE_DIR/gen-.../asn.table                        compiled ASN table (geo/asn_table.py)
    STATE_DIR/gen-.../ipasn.dat[.gz|.xz]               or pyasn IPASN text, from douane before the table
    STATE_DIR/gen-.../asnames.json[.gz|.xz]            pyasn AS names
    STATE_DIR/gen-.../ranges/                          published cloud range files
    STATE_DIR/gen-.../MANIFEST.json                    what was verified, when, from where

A reader resolves `current` once and opens files inside that generation, so an update that swaps
the link during a load never mixes two generations. `load_geo` builds everything from scratch and
is what a reload (SIGHUP, issue 6) calls: the old objects stay in use until the new ones are ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from douane.geo.jurisdiction import Jurisdictions, load_jurisdictions
from douane.geo.lookup import GeoConfig, GeoDatabases

CURRENT = "current"
RANGES = "ranges"
MANIFEST = "MANIFEST.json"
# Base names of the three databases in a generation; the suffix keeps the file's compression.
BASES = {"country": "country.mmdb", "asn": "asn.table", "as_names": "asnames.json"}
# Names an older douane wrote, still read (more slowly) until the next update replaces them.
LEGACY_BASES: dict[str, tuple[str, ...]] = {"asn": ("ipasn.dat",)}
_SUFFIXES = ("", ".gz", ".xz")


def current_generation(state_dir: Path | None) -> Path | None:
    """The generation folder `current` points to, None when there is none (or it is unreadable)."""
    if state_dir is None:
        return None
    try:
        target = (state_dir / CURRENT).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return target if target.is_dir() else None


def generation_file(generation: Path, kind: str) -> Path | None:
    """The database file of `kind` (country, asn, as_names) in a generation, None if absent."""
    for base in (BASES[kind], *LEGACY_BASES.get(kind, ())):
        for suffix in _SUFFIXES:
            path = generation / (base + suffix)
            if path.is_file():
                return path
    return None


@dataclass(frozen=True, slots=True)
class ResolvedFiles:
    """Which files to load: configured ones first, then the state directory's, else embedded (None)."""

    country_db: Path | None
    asn_db: Path | None
    as_names: Path | None
    ranges_dir: Path | None
    generation: Path | None


def resolve_files(
    country_db: Path | None,
    asn_db: Path | None,
    as_names: Path | None,
    ranges_dir: Path | None,
    state_dir: Path | None,
) -> ResolvedFiles:
    """Pick each database: an explicitly configured file wins, then the state directory's, else None.

    None means the data embedded in the package (for the databases) or no ranges.
    """
    generation = current_generation(state_dir)
    if generation is not None:
        country_db = country_db or generation_file(generation, "country")
        asn_db = asn_db or generation_file(generation, "asn")
        as_names = as_names or generation_file(generation, "as_names")
        if ranges_dir is None and (generation / RANGES).is_dir():
            ranges_dir = generation / RANGES
    return ResolvedFiles(country_db, asn_db, as_names, ranges_dir, generation)


@dataclass
class GeoSet:
    """Everything the enrichment stages read: the geo databases and the jurisdiction engine."""

    geo: GeoDatabases
    jurisdictions: Jurisdictions
    files: ResolvedFiles


def load_geo(files: ResolvedFiles, cache_size: int = 65536, logger: Any = None) -> GeoSet:
    """Build and start a fresh set from resolved files (start-up, or a reload on SIGHUP).

    Never raises for a bad data file: its problems are in `geo.problems()` and
    `jurisdictions.problems()`, and the fields it would have answered stay unknown.
    """
    geo = GeoDatabases(
        GeoConfig(country_db=files.country_db, asn_db=files.asn_db, as_names=files.as_names,
                  cache_size=cache_size),
        logger=logger,
    )
    geo.start()
    return GeoSet(geo, load_jurisdictions(files.ranges_dir, cache_size), files)
