"""Legal zone of a server's location: `eea`, `adequate`, `third` or `unknown` (DESIGN.md).

The table is data (`zones.yaml`, each entry with its legal source), validated when it is loaded;
the look-up is a set membership test.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from douane.geo.yaml_loader import safe_load

Zone = Literal["eea", "adequate", "third", "unknown"]
EEA: Final = "eea"
ADEQUATE: Final = "adequate"
THIRD: Final = "third"
UNKNOWN: Final = "unknown"
ZONES: Final[tuple[Zone, ...]] = (EEA, ADEQUATE, THIRD, UNKNOWN)

DEFAULT_ZONES_FILE = Path(__file__).resolve().parent / "zones.yaml"
_CODE = re.compile(r"[A-Z]{2}")
_DECISION_KEYS = {"code", "name", "decision", "date", "source", "scope", "note"}
_DECISION_REQUIRED = {"code", "name", "decision", "date", "source"}


class ZonesError(ValueError):
    """The zones file is invalid; the message names the file, the key and what was expected."""


@dataclass(frozen=True, slots=True)
class AdequacyDecision:
    """A Commission decision under GDPR Art. 45 (or its predecessor, Directive 95/46/EC Art. 25)."""

    code: str
    name: str
    decision: str
    date: dt.date
    source: str
    scope: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Zones:
    """The validated content of a zones file."""

    eea: frozenset[str]
    adequate: Mapping[str, AdequacyDecision]
    partial: Mapping[str, AdequacyDecision]

    def zone(self, country: str | None) -> Zone:
        """Return the zone of an ISO 3166-1 alpha-2 code; `unknown` for None or a non-code."""
        if not country:
            return UNKNOWN
        code = country.strip().upper()
        if not _CODE.fullmatch(code):
            return UNKNOWN
        if code in self.eea:
            return EEA
        if code in self.adequate:
            return ADEQUATE
        return THIRD


def _fail(path: Path, key: str, expected: str, got: object) -> ZonesError:
    return ZonesError(f"{path}: {key}: expected {expected}, got {got!r}")


def _source(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("https://"):
        raise _fail(path, key, "an https:// URL citing the legal source", value)
    return value


def _codes(path: Path, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _fail(path, key, "a non-empty list of ISO 3166-1 alpha-2 codes", value)
    for index, code in enumerate(value):
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise _fail(path, f"{key}[{index}]", "an ISO 3166-1 alpha-2 code such as FR", code)
    return value


def _decisions(path: Path, section: str, value: object) -> dict[str, AdequacyDecision]:
    if not isinstance(value, list):
        raise _fail(path, section, "a list of decisions", value)
    result: dict[str, AdequacyDecision] = {}
    for index, entry in enumerate(value):
        key = f"{section}[{index}]"
        if not isinstance(entry, dict):
            raise _fail(path, key, "a mapping with code, name, decision, date, source", entry)
        if unknown := set(entry) - _DECISION_KEYS:
            raise _fail(path, key, f"only the keys {sorted(_DECISION_KEYS)}", sorted(unknown))
        if missing := _DECISION_REQUIRED - set(entry):
            raise _fail(path, key, f"the keys {sorted(_DECISION_REQUIRED)}", f"missing {sorted(missing)}")
        code = entry["code"]
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise _fail(path, f"{key}.code", "an ISO 3166-1 alpha-2 code such as CH", code)
        if code in result:
            raise _fail(path, f"{key}.code", "each country once", code)
        for text in ("name", "decision", "scope", "note"):
            if text in entry and not isinstance(entry[text], str):
                raise _fail(path, f"{key}.{text}", "a string", entry[text])
        # YAML reads an unquoted 2010-10-19 as a date already; a quoted one is refused, on purpose.
        if not isinstance(entry["date"], dt.date):
            raise _fail(path, f"{key}.date", "a date written YYYY-MM-DD", entry["date"])
        result[code] = AdequacyDecision(
            code=code,
            name=entry["name"],
            decision=entry["decision"],
            date=entry["date"],
            source=_source(path, f"{key}.source", entry["source"]),
            scope=entry.get("scope"),
            note=entry.get("note"),
        )
    return result


def load_zones(path: Path = DEFAULT_ZONES_FILE) -> Zones:
    """Read and validate a zones file.

    Raises:
        ZonesError: the file cannot be read, is not YAML, or breaks the expected structure.
    """
    try:
        document: Any = safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ZonesError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ZonesError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, dict):
        raise _fail(path, "(top level)", "a mapping with eea, adequate, partial", document)
    if unknown := set(document) - {"version", "eea", "adequate", "partial"}:
        raise _fail(path, "(top level)", "only version, eea, adequate, partial", sorted(unknown))
    if document.get("version") != 1:
        raise _fail(path, "version", "1", document.get("version"))

    groups = document.get("eea")
    if not isinstance(groups, list) or not groups:
        raise _fail(path, "eea", "a non-empty list of groups", groups)
    eea: set[str] = set()
    for index, group in enumerate(groups):
        key = f"eea[{index}]"
        if not isinstance(group, dict) or set(group) != {"group", "source", "codes"}:
            raise _fail(path, key, "a mapping with exactly group, source, codes", group)
        _source(path, f"{key}.source", group["source"])
        for code in _codes(path, f"{key}.codes", group["codes"]):
            if code in eea:
                raise _fail(path, f"{key}.codes", "each country once", code)
            eea.add(code)

    adequate = _decisions(path, "adequate", document.get("adequate"))
    partial = _decisions(path, "partial", document.get("partial", []))
    for section, table in (("adequate", adequate), ("partial", partial)):
        if overlap := sorted(eea & table.keys()):
            raise _fail(path, section, "no EEA country (the GDPR applies there)", overlap)
    if overlap := sorted(adequate.keys() & partial.keys()):
        raise _fail(path, "partial", "no country also listed under adequate", overlap)
    return Zones(eea=frozenset(eea), adequate=adequate, partial=partial)


@functools.cache
def default_zones() -> Zones:
    """The zones shipped with douane, loaded once (the file is part of the package)."""
    return load_zones(DEFAULT_ZONES_FILE)


def location_zone(country: str | None) -> Zone:
    """Return `eea`, `adequate`, `third` or `unknown` for an ISO 3166-1 alpha-2 code (or None).

    A country whose decision covers only certified organisations (the United States and the Data
    Privacy Framework) is `third` as a location.
    """
    return default_zones().zone(country)
