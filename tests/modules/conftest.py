from tests.node.conftest import directory, jails, nodes

__all__ = ["directory", "jails", "nodes"]
