"""``python -m audit_tools``."""

from audit_tools.cli import run

run()
