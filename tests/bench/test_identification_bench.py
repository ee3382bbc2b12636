"""Smoke test of bench/identification.py: it replays the foundation and this tree, and says so.

Nothing is timed here: the script reports ratios, it never asserts them. This checks that each of
the three versions really ran from its own tree (the child refuses a douane imported from elsewhere),
counted every packet of the capture, and that the summary names all three.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # identification.py imports its siblings by these names
    spec.loader.exec_module(module)
    return module


mixed_capture = _load("mixed_capture")
replay = _load("replay")
identification = _load("identification")


def _has_foundation() -> bool:
    probe = subprocess.run(
        ["git", "-C", str(identification.REPO), "cat-file", "-e", f"{identification.FOUNDATION}^{{commit}}"],
        capture_output=True, check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _has_foundation(), reason="the foundation commit is not in this clone's history")
def test_three_versions_replayed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "mixed.pcap"
    mixed_capture.write_capture(capture, 1_000, seed=3)
    assert identification.main(["--capture", str(capture), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    summary = out.split("best of 1")[1]
    assert "foundation (no identification)" in summary
    assert "current, identification off" in summary
    assert "current, identification on" in summary
    assert "issue 3's budget" in summary


def test_foundation_tree_is_the_old_code(tmp_path: Path) -> None:
    if not _has_foundation():
        pytest.skip("the foundation commit is not in this clone's history")
    root = identification.foundation_tree(identification.FOUNDATION, tmp_path)
    # The foundation predates identification: its flow table, but no QUIC module yet.
    assert (root / "douane" / "daemon" / "flows.py").is_file()
    assert not (root / "douane" / "daemon" / "quic.py").exists()


def test_child_refuses_another_douane(tmp_path: Path) -> None:
    """A tree without douane in it must not silently replay the installed package instead."""
    empty = tmp_path / "empty"
    (empty / "douane").mkdir(parents=True)
    capture = tmp_path / "mixed.pcap"
    mixed_capture.write_capture(capture, 200, seed=3)
    with pytest.raises(RuntimeError, match="exited with"):
        identification.replay(empty, "on", capture)
