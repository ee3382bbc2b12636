"""douane.geo.zones: the legal zone of a location and the validation of the zones file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from douane.geo.zones import DEFAULT_ZONES_FILE, ZONES, ZonesError, load_zones, location_zone


class TestLocationZone:
    @pytest.mark.parametrize(
        ("country", "zone"),
        [
            ("FR", "eea"),
            ("DE", "eea"),
            ("GR", "eea"),
            ("NO", "eea"),  # the YAML "Norway problem": must not be read as false
            ("IS", "eea"),
            ("LI", "eea"),
            ("GP", "eea"),  # Guadeloupe, an outermost region
            ("RE", "eea"),
            ("YT", "eea"),
            ("MF", "eea"),
            ("GF", "eea"),
            ("MQ", "eea"),
            ("AX", "eea"),
            ("CH", "adequate"),
            ("GB", "adequate"),
            ("JP", "adequate"),
            ("KR", "adequate"),
            ("BR", "adequate"),
            ("US", "third"),  # DPF covers certified organisations, not the country
            ("CN", "third"),
            ("PF", "third"),  # French Polynesia: an overseas territory, outside the EU
            ("GL", "third"),  # Greenland: likewise
        ],
    )
    def test_zones(self, country: str, zone: str) -> None:
        """A country code maps to its legal zone."""
        assert location_zone(country) == zone

    @pytest.mark.parametrize("country", [None, "", "France", "F", "1A", "É1"])
    def test_unknown(self, country: str | None) -> None:
        """No country, or text that is not an alpha-2 code, is `unknown`."""
        assert location_zone(country) == "unknown"

    def test_case_and_space_insensitive(self) -> None:
        """Lower-case codes and surrounding spaces are accepted."""
        assert location_zone(" fr ") == "eea"

    def test_zone_names(self) -> None:
        """The four zones are the ones DESIGN.md names."""
        assert ZONES == ("eea", "adequate", "third", "unknown")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zones.yaml"
    path.write_text(text, encoding="utf-8")
    return path


_GOOD_EEA = "eea:\n  - {group: EU, source: 'https://example.eu', codes: [FR]}\n"
_GOOD_DECISION = "  - {code: CH, name: Switzerland, decision: D, date: 2000-07-26, source: 'https://e.eu'}\n"


class TestLoadZones:
    def test_shipped_file(self) -> None:
        """The shipped zones file loads, with 30 EEA states among its EEA codes."""
        zones = load_zones()
        assert len(zones.eea) == 27 + 3 + 6 + 1  # EU-27, EEA EFTA, outermost regions, Åland
        assert "US" in zones.partial and "US" not in zones.adequate

    def test_every_decision_cites_a_source(self) -> None:
        """Every adequacy decision has an EUR-Lex source and a date in the past."""
        zones = load_zones()
        for decision in [*zones.adequate.values(), *zones.partial.values()]:
            assert decision.source.startswith("https://eur-lex.europa.eu/"), decision.code
            assert decision.date < dt.date(2026, 11, 28)

    def test_shipped_file_path(self) -> None:
        """The shipped file sits next to the module, so it is installed with the package."""
        assert DEFAULT_ZONES_FILE.name == "zones.yaml" and DEFAULT_ZONES_FILE.is_file()

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("version: 1\n" + _GOOD_EEA.replace("[FR]", "[FR, NO]") + "adequate: []\n", "codes[1]"),
            ("version: 1\n" + _GOOD_EEA.replace("[FR]", "[fr]") + "adequate: []\n", "codes[0]"),
            ("version: 1\n" + _GOOD_EEA.replace("https", "http") + "adequate: []\n", "source"),
            ("version: 2\n" + _GOOD_EEA + "adequate: []\n", "version"),
            ("version: 1\n" + _GOOD_EEA + "adequate: []\ncolour: blue\n", "top level"),
            (
                "version: 1\n" + _GOOD_EEA + "adequate:\n" + _GOOD_DECISION.replace("2000-07-26", "'soon'"),
                "adequate[0].date",
            ),
            (
                "version: 1\n" + _GOOD_EEA + "adequate:\n" + _GOOD_DECISION.replace("name:", "nom:"),
                "adequate[0]",
            ),
            ("version: 1\n" + _GOOD_EEA + "adequate:\n" + _GOOD_DECISION * 2, "adequate[1].code"),
            (
                "version: 1\n" + _GOOD_EEA + "adequate:\n" + _GOOD_DECISION.replace("CH", "FR"),
                "adequate",
            ),
            ("version: 1\neea: []\nadequate: []\n", "eea"),
            ("- just\n- a list\n", "top level"),
            ("version: 1\neea: [\n", "not valid YAML"),
        ],
    )
    def test_invalid_file(self, tmp_path: Path, text: str, key: str) -> None:
        """An invalid zones file is refused with a message naming the file and the key."""
        path = _write(tmp_path, text)
        with pytest.raises(ZonesError) as caught:
            load_zones(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ")
        assert key in message

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing zones file is refused with its path."""
        with pytest.raises(ZonesError, match="cannot read it"):
            load_zones(tmp_path / "absent.yaml")

    def test_minimal_valid_file(self, tmp_path: Path) -> None:
        """A minimal valid file gives the zones it lists."""
        zones = load_zones(_write(tmp_path, "version: 1\n" + _GOOD_EEA + "adequate:\n" + _GOOD_DECISION))
        assert zones.zone("FR") == "eea" and zones.zone("CH") == "adequate"
        assert zones.zone("DE") == "third"
        assert zones.adequate["CH"].date == dt.date(2000, 7, 26)
