"""Configuration loading: defaults, the README's example, and errors that name file, key and expectation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from douane.daemon.config import Config, ConfigError, check_sources, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def readme_yaml_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)


class TestExamples:
    def test_readme_example_loads(self, tmp_path: Path) -> None:
        """Every YAML block in the README is a valid configuration."""
        blocks = readme_yaml_blocks()
        assert blocks, "the README lost its configuration example"
        for index, block in enumerate(blocks):
            path = tmp_path / f"readme-{index}.yaml"
            path.write_text(block, encoding="utf-8")
            config = load_config(path)
            assert config.source == str(path)
        first = load_config(tmp_path / "readme-0.yaml")
        assert first.capture.interfaces == ("eth1",)
        assert [z.name for z in first.zones] == ["pacs", "pupil-records"]
        assert first.zones[0].categories == ("health",)
        assert "10.0.0.0/8" in first.flows.internal

    def test_shipped_example_loads(self) -> None:
        """config/douane.yaml, the fully commented example, is valid and sets what it says."""
        config = load_config(ROOT / "config" / "douane.yaml")
        assert config.flows.idle_timeout == 60.0
        assert config.exporter_listen == "127.0.0.1:9742"
        assert config.geo.country_db is None

    def test_geo_folders(self) -> None:
        """geo.ranges_dir and geo.state_dir are read; the state directory has a default."""
        assert Config().geo.state_dir == Path("/var/lib/douane/geo")
        assert Config().geo.ranges_dir is None
        config = parse_config({"geo": {"ranges_dir": "/srv/ranges", "state_dir": "/srv/state"}}, "t")
        assert (config.geo.ranges_dir, config.geo.state_dir) == (Path("/srv/ranges"), Path("/srv/state"))

    def test_no_file_means_defaults(self) -> None:
        """Without a file, the defaults written in code apply."""
        assert load_config(None) == Config()


class TestErrors:
    @pytest.mark.parametrize(
        ("yaml_text", "key", "expected"),
        [
            ("flows:\n  idle_timeout: abc\n", "flows.idle_timeout", "positive number of seconds"),
            ("flows:\n  max_flows: -3\n", "flows.max_flows", "positive whole number"),
            ("flows:\n  idel_timeout: 3\n", "flows.idel_timeout", "known keys"),
            ("colour: blue\n", "colour", "known keys"),
            ("networks:\n  internal: [10.0.0.300/8]\n", "networks.internal[0]", "IP network"),
            ("zones: [{name: a, networks: []}]\n", "zones[0].networks", "at least one network"),
            ("zones: [{name: a, networks: [10.0.0.0/8], categories: [wealth]}]\n",
             "zones[0].categories[0]", "one of health, school, personal"),
            ("zones:\n  - {name: a, networks: [10.0.0.0/8]}\n  - {name: a, networks: [10.1.0.0/16]}\n",
             "zones[1].name", "no other zone"),
            ("exporter:\n  listen: 9742\n", "exporter.listen", "host:port"),
            ("zones: [{name: PACS Room, networks: [10.0.0.0/8]}]\n", "zones[0].name", "lower-case"),
            ("privacy:\n  pseudonymise_internal_addresses: maybe\n",
             "privacy.pseudonymise_internal_addresses", "true or false"),
            ("flows: [1, 2]\n", "flows", "mapping"),
            ("geo:\n  ranges_dir: 3\n", "geo.ranges_dir", "a file path"),
            ("geo:\n  state_dir: ''\n", "geo.state_dir", "a file path"),
        ],
    )
    def test_bad_value_is_named(self, tmp_path: Path, yaml_text: str, key: str, expected: str) -> None:
        """A bad value is refused with the file, the dotted key and the expectation in the message."""
        path = tmp_path / "douane.yaml"
        path.write_text(yaml_text, encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        message = str(info.value)
        assert str(path) in message
        assert f"'{key}'" in message
        assert expected in message

    def test_invalid_yaml_gives_line(self, tmp_path: Path) -> None:
        """A YAML syntax error names the file and the line."""
        path = tmp_path / "broken.yaml"
        path.write_text("capture:\n  interface: [eth1\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"broken\.yaml: expected valid YAML \(line \d+"):
            load_config(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a ConfigError naming it, not a traceback."""
        with pytest.raises(ConfigError, match="not found"):
            load_config(tmp_path / "nope.yaml")

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A binary file is refused as unreadable text."""
        path = tmp_path / "binary.yaml"
        path.write_bytes(b"\xff\xfe\x00garbage")
        with pytest.raises(ConfigError, match="UTF-8"):
            load_config(path)

    def test_top_level_must_be_mapping(self) -> None:
        """A file whose top level is a list is refused."""
        with pytest.raises(ConfigError, match="mapping"):
            parse_config(["capture"], "x.yaml")


COLLECTOR = {"listen": "127.0.0.1:2055", "exporters": ["192.0.2.1"]}


class TestSources:
    """What `douane run` and `douane collect` need before they start (check_sources)."""

    @pytest.mark.parametrize("capture", [
        {"interface": "eth1"},
        {"collector": COLLECTOR},
        {"interface": "eth1", "collector": COLLECTOR},
        {"interface": "eth1", "workers": 4},
    ], ids=["capture", "collector", "both", "workers"])
    def test_run_accepts(self, capture: dict[str, object]) -> None:
        """`douane run` runs live capture, the collector, or both."""
        check_sources(parse_config({"capture": capture}, "x.yaml"))

    @pytest.mark.parametrize(("capture", "live", "key", "expected"), [
        ({}, True, "capture", "capture.interface (the interfaces to capture on), capture.collector"),
        ({"interface": "eth1"}, False, "capture.collector", "the collector's settings"),
        ({"collector": {"listen": "127.0.0.1:2055"}}, True, "capture.collector.exporters",
         "the addresses of the exporters"),
        ({"interface": "eth1", "collector": None}, True, "capture.collector.exporters",
         "the addresses of the exporters"),
    ], ids=["run-neither", "collect-no-collector", "no-exporters", "empty-collector"])
    def test_refused(self, capture: dict[str, object], live: bool, key: str, expected: str) -> None:
        """No flow source, or a collector that would refuse every datagram: refused, naming the
        file, the key and the expectation."""
        config = parse_config({"capture": capture}, "x.yaml")
        with pytest.raises(ConfigError) as info:
            check_sources(config, live=live)
        assert (info.value.key, str(info.value).startswith("x.yaml: key")) == (key, True)
        assert expected in str(info.value)

    def test_collect_ignores_interface(self) -> None:
        """`douane collect` needs only the collector, whatever capture.interface says."""
        check_sources(parse_config({"capture": {"interface": "eth1", "collector": COLLECTOR}}, "x.yaml"),
                      live=False)

    def test_workers_with_collector_refused(self, tmp_path: Path) -> None:
        """capture.workers above 1 with a collector is refused when the file is read (so by
        `douane check` and on SIGHUP too): the workers each see a part of the DNS answers."""
        path = tmp_path / "douane.yaml"
        path.write_text("capture:\n  interface: eth1\n  workers: 2\n  collector:\n"
                        "    exporters: [192.0.2.1]\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.key == "capture.workers"
        assert "expected 1 when capture.collector is set" in str(info.value)
        assert str(path) in str(info.value)
