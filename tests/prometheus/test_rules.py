"""prometheus/: the rule file passes `promtool check rules`, its unit tests pass `promtool test rules`,
every alert has a unit test where it fires and one where it does not, and every metric, label and
label value the rules use exists in what douane really exports (a replay of the demo capture), so
renaming a metric or a label breaks this test instead of silently muting an alert.

promtool comes with Debian's `prometheus` package, which `.ci/run` installs; the promtool tests skip
where it is missing, the others run anywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from douane.daemon.collector import CollectorConfig, CollectorMetrics, FlowCollector
from douane.daemon.metrics import DATA_CATEGORIES, DROP_REASONS, JURISDICTIONS, RELOAD_RESULTS
from douane.daemon.policy import VERDICTS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "douane.rules.yml"
UNIT_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's `prometheus` package (apt-get install prometheus), "
    "as .ci/run does",
)

# Labels the rules may use that douane does not export: Prometheus adds `job` and `instance` to every
# scraped series, and the recording rules rename the policy's `severity` to `verdict`.
TARGET_LABELS = {"job", "instance"}
RULE_LABELS = {"verdict"}
# Metrics of Prometheus itself.
PROMETHEUS_METRICS = {"up"}
# Closed label-value sets, from the code that bounds them.
CLOSED_VALUES: dict[str, set[str]] = {
    "data_category": set(DATA_CATEGORIES),
    "jurisdiction": set(JURISDICTIONS),
    "reason": set(DROP_REASONS),
    "result": set(RELOAD_RESULTS),
    "severity": set(VERDICTS),
    "verdict": set(VERDICTS),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, check=False, timeout=300, cwd=ROOT
    )


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


# --- promtool ------------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests(unit_test: Path) -> None:
    result = promtool("test", "rules", str(unit_test))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- what the unit tests and the rules contain -----------------------------------------------------------


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has at least one evaluation where it fires and one where it must not."""
    fires: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"
    assert (fires | silent) - names == set(), "unit tests name alerts the rules do not have"


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    for rule in alerts():
        severity = rule["labels"]["severity"]
        assert severity in {"critical", "warning"} or set(re.findall(r"\b(critical|warning)\b", severity)), (
            rule["alert"]
        )
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        for part in ("What it means:", "What to check:", "How to fix:"):
            assert part in annotations["description"], (rule["alert"], part)


# --- the rules against a real exposition -----------------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> label names, from `douane replay` of the demo capture with the demo config,
    and from a flow collector."""
    out = tmp_path_factory.mktemp("metrics") / "demo.prom"
    result = subprocess.run(
        [
            sys.executable, "-m", "douane.daemon.cli", "replay", str(ROOT / "daemon" / "data" / "demo.pcap"),
            "-c", str(ROOT / "config" / "demo.yaml"), "--metrics-out", str(out),
        ],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    samples: dict[str, set[str]] = {}
    for text in (out.read_text(), collector_exposition()):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def collector_exposition() -> str:
    """The flow collector's series (`douane collect`, `douane run` with `capture.collector`), which a
    replay does not have: a real collector listening on loopback, one exporter listed."""
    config = CollectorConfig(listen="127.0.0.1:0", exporters=("127.0.0.1",))
    collector = FlowCollector(config, lambda flow: None)
    registry = CollectorRegistry()
    registry.register(CollectorMetrics(collector))
    collector.start()
    try:
        return generate_latest(registry).decode()
    finally:
        collector.stop()


STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LABEL_REPLACE = re.compile(r'label_replace\([^"]*"(\w+)"\s*,\s*"[^"]*"\s*,\s*"(\w+)"', re.DOTALL)


def test_metric_names_exist_in_a_real_exposition(exposition: dict[str, set[str]]) -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used: set[str] = set()
    for rule in rules():
        for name in NAME.findall(STRING.sub('""', rule["expr"])):
            if name.startswith("douane_") or ":" in name:
                used.add(name)
        used.update(name for name, _ in SELECTOR.findall(rule["expr"]))
    assert used, "no metric found in the rules: the parser above is broken"
    unknown = used - set(exposition) - recorded - PROMETHEUS_METRICS
    assert unknown == set(), f"the rules use metrics douane does not export: {sorted(unknown)}"
    # Every raw metric the demo exposition has is one the rules may rely on; the alerts' metrics
    # are all there (the demo flags flows, so the flagged counters exist).
    assert {
        "douane_flagged_flows_total", "douane_egress_bytes_total", "douane_policy_exceptions_expired",
        "douane_packets_total", "douane_packets_dropped_total", "douane_config_reload_total",
        "douane_geo_database_build_timestamp_seconds", "douane_build_info",
    } <= used


def test_labels_and_values_exist_in_a_real_exposition(exposition: dict[str, set[str]]) -> None:
    all_labels = set().union(*exposition.values()) | TARGET_LABELS | RULE_LABELS
    for rule in rules():
        expr = rule["expr"]
        name = rule.get("alert") or rule["record"]
        for metric, body in SELECTOR.findall(expr):
            allowed = exposition.get(metric, all_labels) | TARGET_LABELS
            if ":" in metric:
                allowed = all_labels
            for label, _, value in MATCHER.findall(body):
                assert label in allowed, (name, metric, label)
                if label in CLOSED_VALUES and value:
                    values = set(value.split("|"))
                    assert values <= CLOSED_VALUES[label], (name, label, values - CLOSED_VALUES[label])
        for group in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in all_labels, (name, label)
        for _target, source in LABEL_REPLACE.findall(expr):
            assert source in all_labels, (name, source)
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in all_labels, (name, label)
