"""The schema a log's database must have: see :mod:`openred.store.schema`.

The comparison lives in the store, which runs it too each time it opens a log (a trigger or a
view planted in the file must not run on the node's own writes); verify uses the same code.
"""

from __future__ import annotations

from openred.store.schema import (
    SchemaObject,
    UnknownKind,
    expected_schema,
    foreign_code,
    fresh_database,
    migrate_fresh,
    normalize_sql,
    read_schema,
    schema_differences,
)

__all__ = [
    "SchemaObject", "UnknownKind", "expected_schema", "foreign_code", "fresh_database",
    "migrate_fresh", "normalize_sql", "read_schema", "schema_differences",
]
