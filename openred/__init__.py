"""OpenRed: autonomous nodes, a minimal directory, and a signed, hash-chained event log per node."""

__version__ = "3.0.0.dev0"
