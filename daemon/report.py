"""`douane report`: the evidence store as a document for the DPO (issue 8).

Reads the store read-only (`EvidenceStore.query`) for a period and the period of the same length just
before it, and writes one of:

- `html`: one self-contained page (inline CSS, charts drawn here as inline SVG, no script, no network
  resource; the providers' source URLs are plain links): a summary, the charts, the register and the
  facts behind each provider;
- `csv`: the register, one row per line, for a spreadsheet;
- `json`: everything the page shows (period, summary, register, providers, chart series).

Definitions, used by every format:

- the period is [since 00:00 UTC, until + 1 day 00:00 UTC): `--until` is the last day included
  (today by default); a flow belongs to the day it started;
- *volume* is bytes sent by the internal side (`bytes_out`); received bytes are shown beside it;
- data *left EU jurisdiction* when the flow's jurisdiction is anything but `eu` (`unknown` included:
  half an answer never reads as `eu`, README "Jurisdiction");
- a register row is one (provider, service, jurisdiction, data category, zone); a flow with two data
  categories counts in the row of each (so the register's rows do not add up to the flow count);
  its verdict is the most severe of its flows', its rules and exceptions all those that applied;
- a *sampled* flow came from an exporter that counts 1 packet in N: its volumes are estimates (N
  times what was counted). The summary and each register row count them (`sampled_flows`), and the
  page marks a volume that includes estimates with `≈`.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import secrets
import sqlite3
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from douane.daemon import __version__
from douane.daemon.evidence import EvidenceConfig, EvidenceError, EvidenceStore, Record
from douane.daemon.logsetup import configure_logging
from douane.daemon.pseudonym import Pseudonymiser
from douane.daemon.report_i18n import LANGUAGES, TEXT, UNITS
from douane.geo.providers import Registry, default_registry

EXIT_OK = 0
EXIT_USAGE = 2

FORMATS = ("html", "csv", "json")
SENSITIVE = ("health", "school")
VERDICT_RANK = {"notice": 1, "warning": 2, "critical": 3}
EU = "eu"
UNKNOWN = "unknown"

REGISTER_COLUMNS = (
    "provider", "service", "jurisdiction", "category", "zone", "bytes_out", "bytes_in", "flows",
    "first_seen", "last_seen", "verdict", "rules", "location_countries", "exception_id", "exception_rule",
    "exception_justification", "exception_expires", "exception_flows", "sampled_flows",
)  # fmt: skip

# Jurisdictions in their README order (eu < unknown < third < us < ru < cn), each with its colour.
JURISDICTION_COLOURS = {
    "eu": "#2e7d32", "unknown": "#9e9e9e", "third": "#f9a825", "us": "#1565c0", "ru": "#6a1b9a",
    "cn": "#c62828",
}  # fmt: skip
APPROX = "≈\u202f"  # before a volume that includes estimates from sampled flow records
PALETTE = ("#1565c0", "#c62828", "#2e7d32", "#f9a825", "#6a1b9a", "#00838f", "#ef6c00", "#5d4037")


class ReportError(RuntimeError):
    """The report cannot be made; the message says why (no traceback for the user)."""


@dataclass(frozen=True)
class Period:
    """Days `first` to `last` included, UTC."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime(self.first.year, self.first.month, self.first.day, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive."""
        return self.start + timedelta(days=self.days)

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        """The period of the same length just before."""
        return Period(self.first - timedelta(days=self.days), self.first - timedelta(days=1))


# --- reading -----------------------------------------------------------------------------------------


def read_flows(path: Path, period: Period) -> tuple[list[Record], list[Record]]:
    """Flagged flows of the period and of the previous one, read-only.

    Raises:
        ReportError: the store is missing, not a douane store, damaged or unreadable.
    """
    if not path.is_file():
        raise ReportError(f"{path}: no evidence store there (set --evidence or evidence.path)")
    store = EvidenceStore(EvidenceConfig(path=path, read_only=True), Pseudonymiser(secrets.token_bytes(32)))
    try:
        store.start()
        try:
            current = store.query(period.start, period.end)
            previous = store.query(period.previous().start, period.start)
        finally:
            store.stop()
    except EvidenceError as exc:
        raise ReportError(str(exc)) from None
    except (sqlite3.Error, ValueError) as exc:  # a page damaged past quick_check, a bad JSON cell
        raise ReportError(f"{path}: unreadable evidence store ({exc})") from None
    return current, previous


# --- the report's data -------------------------------------------------------------------------------


def _jurisdiction(flow: Record) -> str:
    return str(flow.get("jurisdiction") or UNKNOWN)


def _out(flow: Record) -> int:
    return int(flow.get("bytes_out") or 0)


def _inb(flow: Record) -> int:
    return int(flow.get("bytes_in") or 0)


def _sampled(flow: Record) -> bool:
    """Whether the flow's counts are estimates from packet sampling (evidence.py)."""
    return bool(flow.get("sampling_interval"))


def _categories(flow: Record) -> list[str | None]:
    return sorted(flow["data_categories"]) or [None]


def _outside(flows: Iterable[Record], category: str) -> list[Record]:
    return [f for f in flows if category in f["data_categories"] and _jurisdiction(f) != EU]


def _trend(current: int, previous: int) -> float | None:
    if previous == 0:
        return None
    return round((current - previous) * 100.0 / previous, 1)


def resolve_exceptions(flows: Iterable[Record], known: Mapping[str, Mapping[str, str]]) -> None:
    """Completes, in place, exceptions stored by their id only, from the policy's exceptions by id.

    The policy stage puts the exception's id in the flow record, which the store keeps as the
    justification; the policy file has the rule, the justification and the expiry. An id the policy no
    longer has stays as stored (the id in the justification column).
    """
    for flow in flows:
        exc = flow.get("exception")
        if exc and exc.get("rule") is None and exc.get("expires") is None:
            policy_exception = known.get(str(exc.get("justification")))
            if policy_exception is not None:
                flow["exception"] = {"id": exc["justification"], **policy_exception}


def policy_exceptions(policy: Any) -> dict[str, dict[str, str]]:
    """Exception id -> rule, justification, expiry (ISO date) of a loaded `Policy`."""
    return {
        e.id: {"rule": e.rule, "justification": e.justification, "expires": e.expires.isoformat()}
        for e in policy.exceptions
    }


def summary(flows: Sequence[Record], previous: Sequence[Record]) -> dict[str, Any]:
    """The one-minute view: health and school data outside EU jurisdiction, to whom, the trend."""
    categories: dict[str, Any] = {}
    for category in SENSITIVE:
        out = _outside(flows, category)
        before = _outside(previous, category)
        by_provider: dict[str, int] = defaultdict(int)
        by_jurisdiction: dict[str, int] = defaultdict(int)
        for flow in out:
            by_provider[str(flow.get("provider") or UNKNOWN)] += _out(flow)
            by_jurisdiction[_jurisdiction(flow)] += _out(flow)
        volume, previous_volume = sum(map(_out, out)), sum(map(_out, before))
        categories[category] = {
            "bytes_out": volume,
            "flows": len(out),
            "providers": [
                {"provider": p, "bytes_out": b}
                for p, b in sorted(by_provider.items(), key=lambda item: (-item[1], item[0]))
            ],
            "jurisdictions": dict(sorted(by_jurisdiction.items())),
            "previous_bytes_out": previous_volume,
            "previous_flows": len(before),
            "trend_percent": _trend(volume, previous_volume),
        }
    verdicts = {v: sum(1 for f in flows if f["verdict"] == v) for v in VERDICT_RANK}
    return {
        "categories": categories,
        "flows": len(flows),
        "bytes_out": sum(map(_out, flows)),
        "verdicts": verdicts,
        "exception_flows": sum(1 for f in flows if f["exception"]),
        "previous_flows": len(previous),
        "sampled_flows": sum(map(_sampled, flows)),
    }


def register(flows: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per (provider, service, jurisdiction, data category, zone), most severe first."""
    groups: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
    for flow in flows:
        for category in _categories(flow):
            key = (flow.get("provider"), flow.get("service"), _jurisdiction(flow), category, flow.get("zone"))
            groups[key].append(flow)
    rows = []
    for (provider, service, jurisdiction, category, zone), members in groups.items():
        exceptions: dict[tuple[Any, ...], int] = defaultdict(int)
        for flow in members:
            if flow["exception"]:
                exc = flow["exception"]
                exceptions[(exc.get("id"), exc["rule"], exc["justification"], exc["expires"])] += 1
        verdict = max((f["verdict"] for f in members), key=lambda v: VERDICT_RANK.get(v, 0))
        rows.append({
            "provider": provider, "service": service, "jurisdiction": jurisdiction, "category": category,
            "zone": zone, "bytes_out": sum(map(_out, members)), "bytes_in": sum(map(_inb, members)),
            "flows": len(members), "first_seen": min(f["start"] for f in members),
            "last_seen": max(f["end"] for f in members), "verdict": verdict,
            "rules": sorted({f["rule"] for f in members if f["rule"]}),
            "location_countries": sorted({f["location_country"] for f in members if f["location_country"]}),
            "exceptions": [
                {"id": i, "rule": r, "justification": j, "expires": e, "flows": n}
                for (i, r, j, e), n in sorted(exceptions.items(), key=lambda item: str(item[0]))
            ],
            "sampled_flows": sum(map(_sampled, members)),
        })  # fmt: skip
    rows.sort(key=lambda r: (-VERDICT_RANK.get(r["verdict"], 0), -r["bytes_out"], str(r["provider"]),
                             str(r["service"]), str(r["category"]), str(r["zone"])))
    return rows


def provider_facts(flows: Iterable[Record], registry: Registry) -> list[dict[str, Any]]:
    """The registry's facts for each provider seen, with the law texts and every source URL."""
    seen: dict[str, set[str]] = defaultdict(set)
    for flow in flows:
        slug = str(flow.get("provider") or UNKNOWN)
        if flow.get("controller_country"):
            seen[slug].add(flow["controller_country"])
    facts = []
    for slug in sorted(seen, key=lambda s: (s not in registry.providers, s)):
        provider = registry.providers.get(slug)
        if provider is None:
            facts.append({"provider": slug, "registered": False, "controller_countries": sorted(seen[slug])})
            continue
        facts.append({
            "provider": slug, "registered": True, "name": provider.name, "parent": provider.parent,
            "controller_country": provider.controller_country,
            "exposure": [
                {"slug": law, "name": registry.laws[law].name, "sources": list(registry.laws[law].sources)}
                for law in provider.exposure
            ],
            "certifications": [
                {"scheme": c.scheme, "offer": c.offer, "date": c.date, "sources": list(c.sources)}
                for c in provider.certifications
            ],
            "dpf_certified": provider.dpf_certified, "dpf_sources": list(provider.dpf_sources),
            "sources": {name: list(urls) for name, urls in provider.sources.items()},
        })  # fmt: skip
    return facts


def charts(flows: Iterable[Record], period: Period) -> dict[str, Any]:
    """Chart series (bytes sent): per day and jurisdiction, per provider, per hosting country."""
    by_day: dict[str, dict[str, int]] = {
        (period.first + timedelta(days=i)).isoformat(): {} for i in range(period.days)
    }
    by_provider: dict[str, int] = defaultdict(int)
    by_country: dict[str, int] = defaultdict(int)
    for flow in flows:
        day = by_day.setdefault(flow["start"][:10], {})
        day[_jurisdiction(flow)] = day.get(_jurisdiction(flow), 0) + _out(flow)
        by_provider[str(flow.get("provider") or UNKNOWN)] += _out(flow)
        by_country[str(flow.get("location_country") or "??")] += _out(flow)

    def ranked(values: Mapping[str, int]) -> dict[str, int]:
        return dict(sorted(values.items(), key=lambda item: (-item[1], item[0])))

    return {"by_day": by_day, "by_provider": ranked(by_provider), "by_country": ranked(by_country)}


def build(flows: Sequence[Record], previous: Sequence[Record], period: Period, store: Path,
          registry: Registry | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The whole report as JSON-ready data."""
    before = period.previous()
    return {
        "douane_version": __version__,
        "generated": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "store": str(store),
        "period": {"since": period.first.isoformat(), "until": period.last.isoformat(),
                   "previous_since": before.first.isoformat(), "previous_until": before.last.isoformat()},
        "summary": summary(flows, previous),
        "register": register(flows),
        "providers": provider_facts(flows, registry or default_registry()),
        "charts": charts(flows, period),
    }


# --- formats -----------------------------------------------------------------------------------------


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


def csv_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The register flattened for CSV: lists joined with `; `, exceptions column by column."""
    out = []
    for row in report["register"]:
        flat = {k: row[k] for k in REGISTER_COLUMNS if k in row}
        flat["rules"] = "; ".join(row["rules"])
        flat["location_countries"] = "; ".join(row["location_countries"])
        for key in ("id", "rule", "justification", "expires", "flows"):
            flat[f"exception_{key}"] = "; ".join(str(e[key] or "") for e in row["exceptions"])
        out.append({k: "" if flat[k] is None else flat[k] for k in REGISTER_COLUMNS})
    return out


def _cell(value: Any) -> Any:
    # A spreadsheet runs a cell starting with = + - @ as a formula: none of ours may.
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") else value


def render_csv(report: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REGISTER_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in csv_rows(report):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def fmt_int(n: int, lang: str) -> str:
    text = f"{n:,}"
    return text.replace(",", "\u202f") if lang == "fr" else text


def fmt_bytes(n: int, lang: str) -> str:
    units = UNITS[lang]
    value, unit = float(n), 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    text = f"{n} {units[0]}" if unit == 0 else f"{value:.1f} {units[unit]}"
    return text.replace(".", ",") if lang == "fr" else text


def fmt_percent(value: float, lang: str) -> str:
    text = f"{abs(value):.0f}"
    return f"{text}\u202f%" if lang == "fr" else f"{text}%"


def summary_lines(report: Mapping[str, Any], lang: str) -> list[str]:
    """The summary's sentences (plain text, every number from `report["summary"]`)."""
    t = TEXT[lang]
    s = report["summary"]
    lines = [] if s["flows"] else [t["empty"]]
    for category in SENSITIVE:
        c = s["categories"][category]
        if not c["flows"]:
            line = t["nothing"].format(data=t[f"data_{category}"])
        else:
            line = t["sensitive_out"].format(
                volume=fmt_bytes(c["bytes_out"], lang), data=t[f"data_{category}"],
                flows=fmt_int(c["flows"], lang))
            top = [f"{p['provider']} ({fmt_bytes(p['bytes_out'], lang)})" for p in c["providers"][:3]]
            if len(c["providers"]) > 3:
                top.append(t["others"])
            line += " " + t["to_whom"].format(who=", ".join(top))
        trend = c["trend_percent"]
        if c["previous_bytes_out"] == 0:
            line += " ; " + t["trend_new"] if lang == "fr" else "; " + t["trend_new"]
        else:
            prev = fmt_bytes(c["previous_bytes_out"], lang)
            word = "trend_same" if trend == 0 else "trend_up" if trend > 0 else "trend_down"
            sep = " ; " if lang == "fr" else "; "
            line += sep + t[word].format(pct=fmt_percent(trend, lang), prev=prev)
        lines.append(line + ".")
    if s["flows"]:
        lines.append(t["totals"].format(
            flows=fmt_int(s["flows"], lang), volume=fmt_bytes(s["bytes_out"], lang),
            critical=fmt_int(s["verdicts"]["critical"], lang),
            warning=fmt_int(s["verdicts"]["warning"], lang),
            exceptions=fmt_int(s["exception_flows"], lang)) + ".")  # fmt: skip
    if s.get("sampled_flows"):
        lines.append(t["sampled"].format(flows=fmt_int(s["sampled_flows"], lang)))
    return lines


# --- SVG charts ----------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _svg_open(width: int, height: int, title: str) -> str:
    # The SVG namespace is an identifier, not a resource: nothing is fetched.
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}"><title>{_e(title)}</title>')


def svg_by_day(series: Mapping[str, Mapping[str, int]], lang: str, title: str) -> str:
    """Stacked bars: bytes sent per day, one colour per jurisdiction."""
    width, height, left, bottom, top = 900, 260, 70, 40, 30
    days = list(series)
    peak = max((sum(v.values()) for v in series.values()), default=0)
    plot_w, plot_h = width - left - 10, height - bottom - top
    parts = [_svg_open(width, height, title),
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#444"/>']
    if peak == 0 or not days:
        parts.append(f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle">—</text></svg>')
        return "".join(parts)
    step = plot_w / len(days)
    label_every = -(-len(days) // 12)
    bar = max(step * 0.8, 1.0)
    for i, day in enumerate(days):
        y = float(top + plot_h)
        for jurisdiction, colour in JURISDICTION_COLOURS.items():
            value = series[day].get(jurisdiction, 0)
            if not value:
                continue
            h = max(value / peak * plot_h, 1.0)
            y -= h
            parts.append(f'<rect x="{left + i * step:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{_e(day)} {_e(jurisdiction)}: '
                         f"{_e(fmt_bytes(value, lang))}</title></rect>")
        if i % label_every == 0:  # about a dozen date labels, whatever the period's length
            parts.append(f'<text x="{left + i * step:.1f}" y="{height - 22}" font-size="11">'
                         f"{_e(day[5:])}</text>")
    parts.append(f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">'
                 f"{_e(fmt_bytes(peak, lang))}</text>")
    x = left
    for jurisdiction, colour in JURISDICTION_COLOURS.items():
        parts.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{height - 3}" font-size="11">{_e(jurisdiction)}</text>')
        x += 80
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(values: Mapping[str, int], lang: str, title: str, *, share: bool) -> str:
    """Horizontal bars, largest first: the share of the total (percent) or the volume."""
    items = list(values.items())[:12]
    total = sum(values.values())
    row, left, width = 26, 150, 900
    height = max(row * len(items) + 20, 60)
    parts = [_svg_open(width, height, title)]
    if total == 0:
        parts.append(f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle">—</text></svg>')
        return "".join(parts)
    peak = max(v for _, v in items)
    for i, (name, value) in enumerate(items):
        y = 10 + i * row
        w = max(value / peak * (width - left - 170), 1.0)
        label = fmt_percent(value * 100 / total, lang) if share else fmt_bytes(value, lang)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="13">{_e(name)}</text>'
                     f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row - 6}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{left + w + 6:.1f}" y="{y + 15}" font-size="13">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- HTML ----------------------------------------------------------------------------------------------

CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;border-bottom:3px solid #1565c0;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.6em;color:#1565c0}
.meta{color:#555;font-size:.9em}
.summary{background:#f3f6fb;border-left:5px solid #1565c0;padding:.6em 1.2em;font-size:1.1em}
.summary li{margin:.4em 0}
table{border-collapse:collapse;width:100%;font-size:.85em}
th,td{border:1px solid #ccc;padding:.3em .4em;text-align:left;vertical-align:top}
th{background:#eef}
td.n{text-align:right;white-space:nowrap}
.critical{color:#b71c1c;font-weight:bold}.warning{color:#e65100;font-weight:bold}
.expired{color:#b71c1c}
.chart{display:block;margin:.5em 0 1.5em;max-width:100%;height:auto}
dl{margin:.3em 0 1em}dt{font-weight:bold;float:left;clear:left;width:14em}dd{margin-left:15em}
@media print{body{margin:0}h2{page-break-after:avoid}}
"""


def _anchors(urls: Iterable[str]) -> str:
    # Plain links only (https, checked by the registry loader): nothing is fetched when the page opens.
    return " ".join(f'<a href="{_e(u)}">{_e(u)}</a>' for u in urls if u.startswith("https://"))


def render_html(report: Mapping[str, Any], lang: str, today: date | None = None) -> str:
    t = TEXT[lang]
    today = today or datetime.now(UTC).date()
    p = report["period"]
    out = [f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">',
           f"<title>{_e(t['title'])} {_e(p['since'])} – {_e(p['until'])}</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>{_e(t['title'])}</h1>",
           f'<p class="meta">{_e(t["period"].format(**p))}<br>' + _e(t["generated"].format(
               now=report["generated"], version=report["douane_version"], store=report["store"])) + "</p>",
           f"<h2>{_e(t['summary'])}</h2><ul class=\"summary\">"]
    out += [f"<li>{_e(line)}</li>" for line in summary_lines(report, lang)]
    out.append("</ul>")
    c = report["charts"]
    out += [f"<h2>{_e(t['charts'])}</h2>",
            f"<h3>{_e(t['chart_time'])}</h3>", svg_by_day(c["by_day"], lang, t["chart_time"]),
            f"<h3>{_e(t['chart_provider'])}</h3>", svg_bars(c["by_provider"], lang, t["chart_provider"],
                                                             share=True),
            f"<h3>{_e(t['chart_country'])}</h3>", svg_bars(c["by_country"], lang, t["chart_country"],
                                                            share=False)]
    out += [f"<h2>{_e(t['register'])}</h2><p>{_e(t['register_note'])}</p><table><thead><tr>"]
    heads = ("provider", "service", "jurisdiction", "category", "zone", "volume_out", "volume_in", "flows",
             "first_seen", "last_seen", "verdict", "rule", "countries", "exception")
    out.append("".join(f"<th>{_e(t[h])}</th>" for h in heads) + "</tr></thead><tbody>")
    for row in report["register"]:
        exceptions = []
        for exc in row["exceptions"]:
            expires = exc["expires"] or ""
            expired = bool(expires) and expires < today.isoformat()
            when = f"{t['expired'] if expired else t['expires']} {expires}" if expires else ""
            cls = ' class="expired"' if expired else ""
            name = " / ".join(_e(x) for x in (exc["id"], exc["rule"]) if x)
            exceptions.append(f"<b>{name}</b>: {_e(exc['justification'] or '')} "
                              + (f"<span{cls}>({_e(when)})</span>" if when else ""))
        category = t.get(row["category"] or "uncategorised", row["category"])
        # Volumes that include estimates from sampled flow records: the legend below says so.
        approx = APPROX if row["sampled_flows"] else ""
        out.append(
            "<tr>" + "".join(f"<td>{_e(v)}</td>" for v in (
                row["provider"] or "", row["service"] or "", row["jurisdiction"], category,
                row["zone"] or ""))
            + f'<td class="n">{_e(approx + fmt_bytes(row["bytes_out"], lang))}</td>'
            + f'<td class="n">{_e(approx + fmt_bytes(row["bytes_in"], lang))}</td>'
            + f'<td class="n">{_e(fmt_int(row["flows"], lang))}</td>'
            + f"<td>{_e(row['first_seen'][:19].replace('T', ' '))}</td>"
            + f"<td>{_e(row['last_seen'][:19].replace('T', ' '))}</td>"
            + f'<td class="{_e(row["verdict"])}">{_e(t.get(row["verdict"], row["verdict"]))}</td>'
            + f"<td>{_e(', '.join(row['rules']))}</td><td>{_e(', '.join(row['location_countries']))}</td>"
            + f"<td>{'<br>'.join(exceptions)}</td></tr>"
        )  # fmt: skip
    out.append("</tbody></table>")
    if any(row["sampled_flows"] for row in report["register"]):
        out.append(f"<p>{_e(t['sampled_legend'])}</p>")
    out.append(f"<h2>{_e(t['facts'])}</h2>")
    for fact in report["providers"]:
        if not fact["registered"]:
            out.append(f"<h3>{_e(fact['provider'])}</h3><p>{_e(t['unregistered'])}: "
                       f"{_e(', '.join(fact['controller_countries']))}</p>")
            continue
        laws = "<br>".join(f"{_e(law['name'])} {_anchors(law['sources'])}" for law in fact["exposure"])
        certs = "<br>".join(f"{_e(c['scheme'].upper())}: {_e(c['offer'])} {_e(c['date'] or '')} "
                            f"{_anchors(c['sources'])}" for c in fact["certifications"])
        dpf = ("" if fact["dpf_certified"] is None else
               f"{_e(t['dpf_yes'] if fact['dpf_certified'] else t['dpf_no'])} "
               f"{_anchors(fact['dpf_sources'])}")
        sources = "<br>".join(f"{_e(k)}: {_anchors(v)}" for k, v in fact["sources"].items())
        parent = f" ({_e(fact['parent'])})" if fact["parent"] else ""
        out.append(
            f"<h3>{_e(fact['provider'])}: {_e(fact['name'])}{parent}</h3><dl>"
            f"<dt>{_e(t['controller_country'])}</dt><dd>{_e(fact['controller_country'])}</dd>"
            f"<dt>{_e(t['exposure'])}</dt><dd>{laws or _e(t['none'])}</dd>"
            f"<dt>{_e(t['certifications'])}</dt><dd>{certs or _e(t['none'])}</dd>"
            + (f"<dt>{_e(t['dpf'])}</dt><dd>{dpf}</dd>" if dpf else "")
            + f"<dt>{_e(t['sources'])}</dt><dd>{sources}</dd></dl>"
        )
    out.append(f"<h2>{_e(t['method'])}</h2><p>{_e(t['method_text'])}</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


# --- the command ---------------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Writes `text` beside `path`, then renames: a reader sees the old report or the new one."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def add_parser(sub: Any) -> None:
    """Adds `douane report` to the command's subparsers."""
    p = sub.add_parser("report", help="the DPO's register of transfers outside EU jurisdiction "
                       "(HTML page, CSV or JSON) from the evidence store")
    p.add_argument("--evidence", metavar="PATH", help="the evidence store (else evidence.path of --config)")
    p.add_argument("--config", "-c", metavar="CFG",
                   help="configuration file (YAML): evidence.path, and the policy whose exceptions "
                   "the register explains (rule, justification, expiry)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="first day (UTC)")
    when.add_argument("--last-month", action="store_true",
                      help="the previous calendar month (for a monthly timer)")
    p.add_argument("--until", type=_day, metavar="YYYY-MM-DD", help="last day included (default: today)")
    p.add_argument("--format", choices=FORMATS, help="default: from the -o suffix, else html")
    p.add_argument("--lang", choices=LANGUAGES, default="fr", help="wording (default: fr)")
    p.add_argument("-o", "--output", metavar="PATH", help="the file to write (default: standard output)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="write douane-YYYY-MM-DD_YYYY-MM-DD.html, .csv and .json into DIR instead")
    p.set_defaults(func=cmd_report)


def last_month(today: date) -> Period:
    """The calendar month before `today`'s."""
    last = today.replace(day=1) - timedelta(days=1)
    return Period(last.replace(day=1), last)


def _sources(args: argparse.Namespace) -> tuple[Path, dict[str, dict[str, str]]]:
    """The store's path, and the exceptions of the configured policy (none without --config).

    Raises ConfigError (PolicyError) for a bad configuration or policy: `douane` reports it.
    """
    known: dict[str, dict[str, str]] = {}
    path = Path(args.evidence) if args.evidence else None
    if args.config:
        # Imported here: cli.py imports this module to add the subcommand.
        from douane.daemon.cli import load_policy  # noqa: PLC0415
        from douane.daemon.config import load_config  # noqa: PLC0415

        config = load_config(args.config)
        path = path or config.evidence_path
        known = policy_exceptions(load_policy(config))
    if path is None:
        raise ReportError("no evidence store: give --evidence PATH, or --config with evidence.path set")
    return path, known


def cmd_report(args: argparse.Namespace) -> int:
    configure_logging("warning")  # standard output may be the report itself
    today = datetime.now(UTC).date()
    if args.last_month:
        month = last_month(today)
        args.since, args.until = month.first, month.last
    until = args.until or today
    if args.output_dir:
        # One run, every format: what the monthly timer files for the DPO.
        folder = Path(args.output_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"douane report: {folder}: cannot create ({exc.strerror or exc})", file=sys.stderr)
            return EXIT_USAGE
        for fmt in FORMATS:
            args.format = fmt
            args.output = str(folder / f"douane-{args.since}_{until}.{fmt}")
            status = _one_report(args, today, until)
            if status != EXIT_OK:
                return status
        return EXIT_OK
    return _one_report(args, today, until)


def _one_report(args: argparse.Namespace, today: date, until: date) -> int:
    if until < args.since:
        print(f"douane report: --until {until} is before --since {args.since}", file=sys.stderr)
        return EXIT_USAGE
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
        fmt = {"htm": "html"}.get(suffix, suffix) if suffix in {*FORMATS, "htm"} else "html"
    period = Period(args.since, until)
    try:
        path, known = _sources(args)
        flows, previous = read_flows(path, period)
        resolve_exceptions(flows, known)
        report = build(flows, previous, period, path)
        text = (render_html(report, args.lang, today) if fmt == "html"
                else render_csv(report) if fmt == "csv" else render_json(report))
        if args.output and args.output != "-":
            write_atomically(Path(args.output), text)
        else:
            sys.stdout.write(text)
    except ReportError as exc:
        print(f"douane report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"douane report: {args.output}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
