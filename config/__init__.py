"""douane's shipped configuration files (installed as `douane.config`): the example configuration,
the default policy and the demo's configuration, read with importlib.resources."""
