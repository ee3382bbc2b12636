"""Smoke test of the identifier false-positive benchmark: its corpora are what it says they are.

Nothing is timed or bounded here: the benchmark prints figures and never asserts them. These tests
check that its corpora are reproducible and of the announced kind, that the text corpus names its
sources, and that a tiny run prints every detector for every corpus.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from douane.daemon.identifiers import DETECTORS, scan_identifiers

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    """Import a bench/ script as a module: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("identifiers")


class TestCorpora:
    def test_random_is_reproducible(self) -> None:
        """The random corpus depends on the seed only."""
        assert bench.random_bytes(4096, 1) == bench.random_bytes(4096, 1)
        assert bench.random_bytes(4096, 1) != bench.random_bytes(4096, 2)

    def test_printable_is_half_digits(self) -> None:
        """The printable corpus is printable ASCII, about half digits, reproducible."""
        data = bench.printable_digits(100_000, 1)
        assert data == bench.printable_digits(100_000, 1)
        assert all(32 <= b < 127 or b == 10 for b in data)
        digits = sum(48 <= b <= 57 for b in data)
        assert 0.45 < digits / len(data) < 0.60

    def test_generated_json_is_json(self) -> None:
        """Generated records are one JSON object a line, with IMEI and IMSI fields."""
        lines = bench.generated_json(50_000, 1).splitlines()[:-1]  # the last line is cut to size
        records = [json.loads(line) for line in lines]
        assert records
        assert {"imei", "imsi", "phone", "ts_ms", "siret"} <= set(records[0])
        assert all(len(r["imei"]) == 15 and len(r["imsi"]) == 15 for r in records)

    def test_text_corpus_names_its_sources(self) -> None:
        """The text corpus has the requested size and says how many bytes came from where."""
        data, sources = bench.ordinary_text(300_000, 1)
        assert len(data) == 300_000
        assert sources["generated-json"] > 0
        assert sum(sources.values()) >= 300_000 - len(sources)  # joined with one newline each

    def test_corpora_scan(self) -> None:
        """A slice of each random corpus scans to detector names only (the counts are the bench's)."""
        for data in (bench.random_bytes(65_536, 3), bench.printable_digits(65_536, 3)):
            result = scan_identifiers(data)
            assert set(result) <= set(DETECTORS)


class TestMain:
    def test_tiny_run(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A tiny run prints every detector for every corpus, the candidates and the throughput."""
        assert bench.main(["--mb", "0.1", "--window", "4096", "--json"]) == 0
        out = capsys.readouterr().out
        for corpus in ("random", "printable", "text"):
            assert f"== {corpus}:" in out
        for detector in DETECTORS:
            assert out.count(f"  {detector:5} false positives:") == 3
        results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [r["corpus"] for r in results] == ["random", "printable", "text"]
        assert all(set(r["counts"]) == set(DETECTORS) for r in results)
        assert all(r["ratio_vs_baseline"] is not None for r in results)
