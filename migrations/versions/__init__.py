"""Migration scripts: 0001 the log, then one branch per kind of log (Alembic skips this file)."""
