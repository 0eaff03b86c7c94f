from tests.node.conftest import checks, directory, jails, nodes

__all__ = ["checks", "directory", "jails", "nodes"]
