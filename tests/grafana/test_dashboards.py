"""Grafana dashboards and provisioning: the JSON model, and every panel's PromQL against a real Prometheus.

The live part starts `douane replay demo.pcap -c config/demo.yaml --serve` and a `douane collect` with
one exporter listed (the flow collector's panels), a real `prometheus` server scraping both every
second, and sends every expression of every panel (template variables substituted) to
`/api/v1/query`. The replay has finished before the first scrape, so counters never move while
Prometheus watches: `rate()` and `increase()` return series whose value is 0 (and ratios of them NaN).
What the live test proves is that each expression parses, selects series that exist, and groups by
labels that exist; raw gauges (top destinations, database age, build info) are checked by value.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from douane.daemon import __version__
from douane.daemon.cli import demo_capture

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DOUANE = [sys.executable, "-m", "douane.daemon.cli"]
DS_REF = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# What Grafana would put in place of each variable, for the test's queries. `$__range` is longer than
# the test's few seconds of data; increase() over it still needs only two samples.
SUBSTITUTIONS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "instance": ".*",
    "data_category": ".*",
}
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_GROUPING = re.compile(r"\b(?:by|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")

# Panels the demo leaves empty, with the reason. None: every metric douane exports has series from
# the first scrape (the drop reasons, reload results and egress categories are created at zero), the
# demo has flagged, non-EU, health and located traffic, and no ratio divides an absent series.
EXPECTED_EMPTY: dict[str, str] = {}

# Label values the demo must produce in a panel: (dashboard uid, panel title) -> label -> values.
# They prove each panel groups by the label it means and filters what it claims (the EU providers
# and Germany, reached only through Hetzner, must not appear among the non-EU ones).
DEMO_LABELS: dict[tuple[str, str], dict[str, set[str]]] = {
    ("douane-sovereignty", "Bytes leaving EU jurisdiction by provider"): {
        "provider": {"microsoft", "google", "cloudflare", "alibaba", "unknown"},
    },
    ("douane-sovereignty", "Bytes leaving EU jurisdiction by server country"): {
        "location_country": {"FR", "US", "AU", "JP", "unknown"},
    },
    ("douane-sovereignty", "Egress by server location country"): {
        "location_country": {"FR", "US", "AU", "DE", "JP"},
    },
    ("douane-sovereignty", "Egress by jurisdiction"): {"jurisdiction": {"eu", "us", "cn", "unknown"}},
    ("douane-sovereignty", "Egress leaving EU jurisdiction by data category"): {
        "data_category": {"health", "personal", "school", "unknown"},
    },
    ("douane-sovereignty", "Flagged flows by rule and severity"): {
        "rule": {"health-outside-eu", "personal-outside-eu"},
        "severity": {"critical", "notice"},
    },
    ("douane-sovereignty", "Health and school data to US/CN-controlled providers"): {
        "data_category": {"health"},
        "provider": {"microsoft"},
        "location_country": {"FR"},
    },
    ("douane-sovereignty", "Share of health and school traffic to US/CN-controlled providers"): {
        "data_category": {"health"},
        "jurisdiction": {"us"},
    },
    ("douane-health", "Packets per second by source"): {"source": {"pcap", "collector"}},
    ("douane-health", "Flow records per second by exporter"): {"exporter": {"127.0.0.1"}},
    ("douane-health", "Dropped packets by reason"): {
        "reason": {"kernel", "queue", "malformed", "truncated"},
    },
    ("douane-health", "Config reloads by result"): {"result": {"success", "failure"}},
    ("douane-health", "Geo database age"): {"database": {"country", "asn", "as_names"}},
    ("douane-health", "Version"): {"version": {__version__}},
}


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return board


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def data_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(board) if p["type"] != "row"]


def queries() -> list[tuple[str, str, str, str, str]]:
    """(dashboard uid, panel title, refId, expr, legendFormat) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        board = load(path)
        for panel in data_panels(board):
            for target in panel.get("targets", []):
                out.append((board["uid"], panel["title"], target["refId"], target.get("expr", ""),
                            target.get("legendFormat", "")))
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, variable name, label_values query) for every query variable."""
    out = []
    for path in DASHBOARDS:
        board = load(path)
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append((board["uid"], var["name"], query))
    return out


def substitute(expr: str) -> str:
    """Grafana's part: template variables replaced by what an 'All' selection and a 1 h range give."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in SUBSTITUTIONS:
            raise AssertionError(f"unknown template variable ${name} in {expr!r}")
        return SUBSTITUTIONS[name]

    return _VARIABLE.sub(value, expr)


def labels_used(expr: str) -> set[str]:
    """Label names an expression groups, joins or matches on."""
    used = {m.group(1) for m in _MATCHER.finditer(expr)}
    for group in _GROUPING.finditer(expr):
        used.update(name.strip() for name in group.group(1).split(",") if name.strip())
    return used


# --- the JSON model and the provisioning files ------------------------------------------------------

def test_two_dashboards() -> None:
    assert [p.name for p in DASHBOARDS] == ["douane-health.json", "douane-sovereignty.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
class TestDashboardModel:
    def test_model(self, path: Path) -> None:
        board = load(path)
        assert board["uid"] == path.stem
        assert board["title"].startswith("douane")
        assert 36 <= board["schemaVersion"] <= 41
        assert board["id"] is None  # provisioned: Grafana assigns the id
        assert "douane" in board["tags"]

    def test_panels_have_title_target_and_unique_id(self, path: Path) -> None:
        board = load(path)
        ids = [p["id"] for p in all_panels(board)]
        assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
        titles = [p["title"] for p in data_panels(board)]
        assert len(titles) == len(set(titles)), f"duplicate panel titles in {path.name}"
        for panel in data_panels(board):
            assert panel.get("title"), f"panel {panel['id']} has no title"
            assert panel.get("description"), f"{panel['title']}: no description"
            targets = panel.get("targets", [])
            assert targets, f"{panel['title']}: no target"
            assert all(t.get("expr", "").strip() for t in targets), f"{panel['title']}: empty expr"
            ref_ids = [t["refId"] for t in targets]
            assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: duplicate refId"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{panel['title']}: gridPos"

    def test_datasource_references(self, path: Path) -> None:
        """Every panel and target reads the datasource variable, which defaults to the provisioned uid."""
        board = load(path)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        ds = variables["DS_PROMETHEUS"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"
        assert ds["current"]["value"] == provisioned_datasource()["uid"]
        for panel in data_panels(board):
            assert panel["datasource"] == DS_REF, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DS_REF, panel["title"]
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"] == DS_REF, var["name"]

    def test_variables(self, path: Path) -> None:
        """`instance` everywhere, `data_category` on the sovereignty board; each used one is defined."""
        board = load(path)
        defined = {v["name"] for v in board["templating"]["list"]}
        assert "instance" in defined
        if board["uid"] == "douane-sovereignty":
            assert "data_category" in defined
        for panel in data_panels(board):
            for target in panel["targets"]:
                for match in _VARIABLE.finditer(target["expr"]):
                    name = match.group(1) or match.group(2)
                    assert name.startswith("__") or name in defined, f"{panel['title']}: ${name}"
                assert 'instance=~"$instance"' in target["expr"], f"{panel['title']}: no $instance"


def provisioned_datasource() -> dict[str, Any]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "douane.yaml").read_text())
    assert doc["apiVersion"] == 1
    (source,) = doc["datasources"]
    assert isinstance(source, dict)
    return source


def test_datasource_provisioning() -> None:
    source = provisioned_datasource()
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"].startswith("http")


def test_dashboard_provisioning_points_at_the_installed_dashboards() -> None:
    """The provider reads the folder the README installs grafana/dashboards/*.json into."""
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "douane.yaml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    readme = (GRAFANA / "README.md").read_text()
    assert f"grafana/dashboards/*.json {folder}/" in readme


# --- live: a real Prometheus scraping a real douane ---------------------------------------------------

def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as err:  # a bad query answers 400 with the error in the body
        body = json.loads(err.read())
    return body


def wait_until(ready: Any, what: str, procs: list[subprocess.Popen[bytes]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: {proc.args[0]} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Prometheus that has scraped `douane replay demo.pcap --serve` and `douane collect`
    at least three times each."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus server is not installed "
                    "(Debian package `prometheus`; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("prometheus")
    douane_port, collect_port, prom_port = free_port(), free_port(), free_port()
    collect_config = tmp / "collect.yaml"
    collect_config.write_text(
        f"capture:\n  collector:\n    listen: 127.0.0.1:{free_port(socket.SOCK_DGRAM)}\n"
        "    exporters: [127.0.0.1]\n"
        f"exporter:\n  listen: 127.0.0.1:{collect_port}\ngeo:\n  state_dir: {tmp / 'geo'}\n"
        "logging:\n  format: json\n", encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        # The alert and recording rules run on the same server, so the tests below can check that
        # every rule evaluates against real douane series (issue 6).
        "rule_files": [str(ROOT / "prometheus" / "douane.rules.yml")],
        "scrape_configs": [{"job_name": "douane",
                            "static_configs": [{"targets": [f"127.0.0.1:{douane_port}",
                                                            f"127.0.0.1:{collect_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs: list[subprocess.Popen[bytes]] = []
    with (tmp / "douane.log").open("wb") as douane_log, (tmp / "prometheus.log").open("wb") as prom_log:
        try:
            procs.append(subprocess.Popen(
                [*DOUANE, "replay", str(demo_capture()), "-c", str(ROOT / "config" / "demo.yaml"),
                 "--serve", f"127.0.0.1:{douane_port}"],
                stdout=subprocess.DEVNULL, stderr=douane_log))
            procs.append(subprocess.Popen([*DOUANE, "collect", "-c", str(collect_config)],
                                          stdout=subprocess.DEVNULL, stderr=douane_log))
            procs.append(subprocess.Popen(
                [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=prom_log))
            base = f"http://127.0.0.1:{prom_port}"

            def scraped_three_times() -> bool:
                found = get_json(f"{base}/api/v1/query?query=" + urllib.parse.quote(
                    "count_over_time(douane_build_info[1m])"))
                result = found.get("data", {}).get("result", [])
                return len(result) == 2 and all(float(r["value"][1]) >= 3 for r in result)

            try:
                wait_until(scraped_three_times, "three scrapes of each douane by prometheus", procs)
            except AssertionError as err:
                logs = (tmp / "douane.log").read_text() + (tmp / "prometheus.log").read_text()
                raise AssertionError(f"{err}\n{logs[-3000:]}") from None
            yield base
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def query(base: str, expr: str) -> dict[str, Any]:
    return get_json(f"{base}/api/v1/query?query=" + urllib.parse.quote(expr))


@pytest.fixture(scope="module")
def label_names(prometheus: str) -> set[str]:
    found = get_json(f"{prometheus}/api/v1/labels")
    assert found["status"] == "success"
    return set(found["data"])


@pytest.mark.parametrize(("uid", "title", "ref", "expr", "legend"), queries(),
                         ids=[f"{q[0]}:{q[1]}:{q[2]}" for q in queries()])
def test_panel_query(prometheus: str, label_names: set[str], uid: str, title: str, ref: str,
                     expr: str, legend: str) -> None:
    """The expression parses and runs; the demo fills it; its labels and legend name real labels."""
    unknown = labels_used(expr) - label_names
    assert not unknown, f"labels no douane series has: {sorted(unknown)}"
    found = query(prometheus, substitute(expr))
    assert found["status"] == "success", found.get("error")
    result = found["data"]["result"]
    if title in EXPECTED_EMPTY:
        assert result == [], f"expected empty ({EXPECTED_EMPTY[title]})"
        return
    assert result, f"no data from the demo for {title!r}: {substitute(expr)}"
    for name in _LEGEND_LABEL.findall(legend):
        assert all(name in series["metric"] for series in result), f"legend {{{{{name}}}}} not in result"
    for label, expected in DEMO_LABELS.get((uid, title), {}).items():
        assert {series["metric"].get(label) for series in result} == expected, label


def test_every_expected_label_set_names_a_panel() -> None:
    titles = {(q[0], q[1]) for q in queries()}
    assert set(DEMO_LABELS) <= titles
    assert set(EXPECTED_EMPTY) <= {q[1] for q in queries()}


@pytest.mark.parametrize(("uid", "name", "expr"), variable_queries(),
                         ids=[f"{v[0]}:{v[1]}" for v in variable_queries()])
def test_variable_query(prometheus: str, uid: str, name: str, expr: str) -> None:
    """`label_values(selector, label)` as Grafana sends it: the label values API with a match[]."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr)
    assert match, expr
    selector, label = substitute(match.group(1)), match.group(2)
    found = get_json(f"{prometheus}/api/v1/label/{label}/values?match[]=" + urllib.parse.quote(selector))
    assert found["status"] == "success", found.get("error")
    values = set(found["data"])
    if name == "instance":
        assert len(values) == 2 and all(v.startswith("127.0.0.1:") for v in values)  # both douane
    else:
        assert values == {"health", "school", "personal", "unknown"}


def test_gauges_from_the_demo(prometheus: str) -> None:
    """Values, where the dashboards read gauges: the top ASN, the databases' age, the build."""
    def panel_query(title: str) -> dict[str, Any]:
        return query(prometheus, substitute(next(q[3] for q in queries() if q[1] == title)))

    top = panel_query("Top destination ASNs (last hour)")
    by_rank = {s["metric"]["rank"]: s for s in top["data"]["result"]}
    assert by_rank["1"]["metric"]["asn"] == "8075"  # Microsoft: the PACS's DICOM to Azure
    assert float(by_rank["1"]["value"][1]) == 83024
    age = panel_query("Oldest geo database")
    assert float(age["data"]["result"][0]["value"][1]) > 0
    builds = panel_query("Build info")
    assert [s["metric"]["version"] for s in builds["data"]["result"]] == [__version__] * 2  # both


def test_alert_rules_evaluate_against_real_series(prometheus: str) -> None:
    """Every alert and recording rule evaluates without error on a server scraping the demo, and the
    demo's flagged health flow to Azure raises the health alert."""
    def evaluated() -> bool:
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        return all(rule.get("lastEvaluation", "").startswith("20") and
                   not rule["lastEvaluation"].startswith("0001")
                   for group in groups for rule in group["rules"])

    wait_until(evaluated, "every rule evaluated once", [])
    groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 12
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken
    alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    active = {alert["labels"]["alertname"] for alert in alerts}
    assert "DouaneHealthDataOutsideEU" in active, active
