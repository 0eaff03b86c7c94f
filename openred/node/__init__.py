"""The node: decisions, services, read models and its Quart app (``openred.node.app``).

Importing this package imports no web framework: audit_tools reads the node's events and
projections through it.
"""
