"""Envoy as the data plane: the router's control plane writes Envoy's resources.

`resources.py` and `listeners.py` map a snapshot and the config to xDS resources (pure),
`bootstrap.py` writes Envoy's start-up config, `files.py` delivers resources atomically,
`process.py` supervises the Envoy process and `engine.py` ties them to the `Engine`
protocol. Imported lazily: only `proxy.engine: envoy` loads anything but the settings.
"""
