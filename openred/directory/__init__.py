"""The directory (DESIGN §2–§5): signed node records, discovery, status, and paired grants.

Pure parts, importable without Quart (``openred/kinds.py`` and ``audit_tools`` import them):
``events`` (types, payloads, registry), ``models`` (SQLModel read models), ``projections``,
``decisions`` (one ``decide_*`` per command), ``tree`` (the Merkle proofs cache),
``ratelimit``. The service and the HTTP app live in ``service`` and ``app``.
"""
