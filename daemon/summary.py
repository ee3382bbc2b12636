"""The readable summary `douane replay` prints: destinations by AS and country."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from douane.daemon.flows import TableStats


@dataclass
class Row:
    flows: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


@dataclass
class Summary:
    """A sink that aggregates declared flows per destination (provider or AS, country)."""

    rows: dict[tuple[str, str, str, str], Row] = field(default_factory=dict)
    flagged: dict[tuple[str, str, str, str, str], Row] = field(default_factory=dict)
    directions: dict[str, int] = field(default_factory=dict)
    flows: int = 0

    def __call__(self, record: dict[str, Any]) -> None:
        self.flows += 1
        direction = record["direction"]
        self.directions[direction] = self.directions.get(direction, 0) + 1
        verdict = record.get("verdict")
        if verdict in ("notice", "warning", "critical"):
            flag_key = (str(verdict), record["rule"] or "-", record["provider"] or "-",
                        ",".join(record["data_categories"]) or "-", record.get("zone") or "-")
            flag = self.flagged.get(flag_key)
            if flag is None:
                flag = self.flagged[flag_key] = Row()
            flag.flows += 1
            flag.bytes_out += record["bytes_in" if direction == "inbound" else "bytes_out"]
        if direction == "internal":
            return
        asn = record["asn"]
        key = (
            record["provider"] or "",
            f"AS{asn}" if asn is not None else "-",
            record["as_name"] or "unknown",
            record["location_country"] or "??",
        )
        row = self.rows.get(key)
        if row is None:  # not setdefault: it would build a Row per flow to throw away
            row = self.rows[key] = Row()
        row.flows += 1
        # "out" is what the local (internal, or opening) side sent to the remote one.
        if direction == "inbound":
            row.bytes_out += record["bytes_in"]
            row.bytes_in += record["bytes_out"]
        else:
            row.bytes_out += record["bytes_out"]
            row.bytes_in += record["bytes_in"]

    def render(self, out: TextIO, stats: TableStats, source: str, limit: int = 25) -> None:
        dropped = sum(stats.dropped.values())
        out.write(
            f"{source}: {stats.packets:,} packets, {self.flows:,} flows "
            f"({', '.join(f'{n:,} {d}' for d, n in sorted(self.directions.items())) or 'none'}); "
            f"{dropped:,} malformed or truncated, {stats.ignored:,} non-IP\n\n"
        )
        if not self.rows:
            out.write("No flow to an external destination.\n")
            return
        header = ("provider", "AS", "AS name", "country", "flows", "bytes out", "bytes in")
        ranked = sorted(self.rows.items(), key=lambda kv: (-kv[1].bytes_out, kv[0]))
        lines = [
            (prov or "-", asn, name[:40], cc, f"{r.flows:,}", _size(r.bytes_out), _size(r.bytes_in))
            for (prov, asn, name, cc), r in ranked[:limit]
        ]
        rest = ranked[limit:]
        if rest:
            lines.append((
                "", "", f"({len(rest)} more destinations)", "",
                f"{sum(r.flows for _, r in rest):,}",
                _size(sum(r.bytes_out for _, r in rest)),
                _size(sum(r.bytes_in for _, r in rest)),
            ))
        _table(out, header, lines, numeric={4, 5, 6})
        if self.flagged:
            out.write("\nFlagged by the policy:\n")
            rank = {"critical": 0, "warning": 1, "notice": 2}
            ranked_flags = sorted(self.flagged.items(), key=lambda kv: (rank[kv[0][0]], -kv[1].bytes_out))
            _table(
                out,
                ("verdict", "rule", "provider", "data", "zone", "flows", "bytes out"),
                [(*key, f"{r.flows:,}", _size(r.bytes_out)) for key, r in ranked_flags],
                numeric={5, 6},
            )


def _table(
    out: TextIO, header: tuple[str, ...], lines: Sequence[tuple[str, ...]], numeric: set[int]
) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    for cells in (header, *lines):
        out.write(
            "  ".join(
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
            + "\n"
        )


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
