"""The Alembic migrations, installed with the package as ``openred.store.migrations``."""
