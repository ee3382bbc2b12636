"""The YAML loader for the files douane ships and reads at every start (catalogue, zones, registry)."""

from __future__ import annotations

from typing import Any

import yaml

# libyaml's safe loader when PyYAML has it (about 10x faster), else Python's: same safe constructors,
# same documents, and both raise yaml.YAMLError with the line and column of a problem.
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, through libyaml when it is there."""
    return yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader
