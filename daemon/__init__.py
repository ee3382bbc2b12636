"""douane's daemon: capture sources, dissectors, flow table, pipeline, sinks and the CLI."""

# The one place the version is written: pyproject.toml reads it from here (`dynamic`), so that every
# start does not pay importlib.metadata (about 30 ms) to look it up.
__version__ = "0.1.0"
