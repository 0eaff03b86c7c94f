from tests.node.conftest import directory, jails

__all__ = ["directory", "jails"]
