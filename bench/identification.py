"""Issue 3's budget: `douane replay` with identification on, against the foundation's own figure.

Issue 3 asks that the replay benchmark of the foundation issue (issue 2) stay within 15 % of its
figure with identification on. This script measures the three versions that the sentence compares,
in one run, on the same capture and machine, alternating them so that the machine's noise falls on
all three alike:

- **foundation**: the tree at the commit that closed issue 2 (``--foundation``, default 5bb51db), taken
  from this repository's history with ``git archive``;
- **current, identification off**: this tree with the flow table's inspector removed, so no DNS,
  TLS, HTTP or QUIC payload is read (the rest of the pipeline runs as usual);
- **current**: this tree as it runs, everything on.

Each run is ``douane replay FILE --metrics-out /dev/null`` end to end in a fresh process (start-up
included, as in ``replay.py``); the best of ``--repeat`` runs is kept per version, by CPU time and by
wall time. Both trees are byte-compiled first, so neither pays for compiling its modules. Figures are
ratios; the script prints them and never fails on them.
"""

from __future__ import annotations

import argparse
import compileall
import io
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Run as a script (`python bench/identification.py`): its siblings are on sys.path.
from mixed_capture import DEFAULT_RATE, DEFAULT_SEED, OUT_DIR, cached_capture
from replay import run_child, warm_page_cache

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "geo", "config")  # each installs as douane.<name> (pyproject.toml)
FOUNDATION = "5bb51db"  # issue 2's last commit: "README performance figures"
BUDGET = 1.15  # issue 3: within 15 % of the foundation's figure

# The child: import douane from ROOT (not from the installed package), optionally without the flow
# table's inspector, and replay the capture.
_CHILD = """
import os, sys
root, mode, capture = sys.argv[1:4]
sys.path.insert(0, root)
import douane.daemon.cli as cli
if not cli.__file__.startswith(root):
    raise SystemExit(f"douane imported from {cli.__file__}, not from {root}")
if mode == "off":
    build = cli.Replay.build.__func__
    def without_identification(cls, *args, **kwargs):
        replay = build(cls, *args, **kwargs)
        replay.table._inspector = None
        return replay
    cli.Replay.build = classmethod(without_identification)
sys.exit(cli.main(["replay", capture, "--metrics-out", os.devnull]))
"""


@dataclass
class Best:
    """The best run of one version, by CPU time and by wall time (kept separately)."""

    cpu: float = float("inf")
    wall: float = float("inf")

    def add(self, cpu: float, wall: float) -> None:
        self.cpu = min(self.cpu, cpu)
        self.wall = min(self.wall, wall)


def foundation_tree(revision: str, into: Path) -> Path:
    """The package folders at `revision`, laid out as the installed `douane` namespace."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, *PACKAGES],
        check=True, capture_output=True,
    ).stdout
    root = into / "foundation"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root / "douane", filter="data")
    return root


def current_tree(into: Path) -> Path:
    """This working tree's package folders, linked under a `douane` folder."""
    root = into / "current"
    (root / "douane").mkdir(parents=True)
    for name in PACKAGES:
        (root / "douane" / name).symlink_to(REPO / name)
    return root


def replay(root: Path, mode: str, capture: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one replay in a fresh process."""
    child = run_child([sys.executable, "-c", _CHILD, str(root), mode, str(capture)])
    if child.returncode != 0:
        raise RuntimeError(f"{root.name} ({mode}) exited with {child.returncode}:\n{child.stderr[-2000:]}")
    return child.cpu_seconds, child.wall_seconds


def _label(name: str, mode: str) -> str:
    if name == "foundation":
        return f"{'foundation (no identification)':36s}"
    return f"{'current, identification ' + mode:36s}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs per version, best kept (default 5)")
    parser.add_argument("--foundation", default=FOUNDATION, help=f"git revision (default {FOUNDATION})")
    parser.add_argument("--capture", type=Path, help="replay this file instead of the mixed capture")
    args = parser.parse_args(argv)

    if args.capture is not None:
        capture = args.capture
    else:
        capture, _info = cached_capture(args.packets, DEFAULT_SEED, DEFAULT_RATE, OUT_DIR)
    print(f"capture: {capture}", flush=True)
    warm_page_cache(capture)
    versions = (("foundation", "on"), ("current", "off"), ("current", "on"))
    best = {version: Best() for version in versions}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {
            "foundation": foundation_tree(args.foundation, Path(tmp)),
            "current": current_tree(Path(tmp)),
        }
        for root in roots.values():
            compileall.compile_dir(root, quiet=1, workers=1)
        for run in range(args.repeat):
            for name, mode in versions:
                cpu, wall = replay(roots[name], mode, capture)
                best[(name, mode)].add(cpu, wall)
                print(f"run {run + 1}: {_label(name, mode)}  cpu {cpu:.2f} s  wall {wall:.2f} s", flush=True)

    base = best[("foundation", "on")]
    print(f"\nbest of {args.repeat}, against the foundation ({args.foundation}):")
    for (name, mode), b in best.items():
        print(f"  {_label(name, mode)}  cpu {b.cpu:5.2f} s ({b.cpu / base.cpu:.3f}x)"
              f"  wall {b.wall:5.2f} s ({b.wall / base.wall:.3f}x)")
    on, off = best[("current", "on")], best[("current", "off")]
    print(f"identification adds {on.cpu - off.cpu:.2f} s of CPU = {(on.cpu - off.cpu) / base.cpu:.0%} of the "
          f"foundation's figure")
    verdict = "met" if on.cpu / base.cpu <= BUDGET and on.wall / base.wall <= BUDGET else "NOT met"
    print(f"issue 3's budget (current <= {BUDGET:.2f}x the foundation, CPU and wall): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
