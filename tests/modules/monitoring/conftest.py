"""Fixtures shared with the node tests: real jails and a directory log."""

from tests.node.conftest import directory, jails

__all__ = ["directory", "jails"]
