"""douane's daemon: capture sources, dissectors, flow table, pipeline, sinks and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("douane")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
