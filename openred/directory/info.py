"""Unsigned routes: health, the directory's key, its log's checkpoint (DESIGN §4)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import validate_querystring, validate_response

from openred.directory.routing import problems, service
from openred.directory.schemas import CheckpointQuery, CheckpointReply, DirectoryKey, Health
from openred.modules.monitoring.health import (
    database_writable,
    jail_answering,
    refusal,
)
from openred.store.sqlite import DATABASE_NAME

blueprint = Blueprint("info", __name__, url_prefix="/api/v3")


@blueprint.get("/health")
@validate_response(Health, 200)
@problems(503)
async def health() -> dict[str, Any]:
    """Status, version, node counts, and the log's size and root; 503 naming a failing part.

    Checks that the database is writable and the jail answers (:mod:`openred.modules.
    monitoring.health`) before reading the counts.
    """
    svc = service()
    failure = refusal(await svc.health_checks.run(lambda: {
        "database": database_writable(svc.settings.data_dir / DATABASE_NAME),
        "jail": jail_answering(svc.jail),
    }))
    if failure is not None:
        raise failure
    return await svc.health()


@blueprint.get("/directory/key")
@validate_response(DirectoryKey, 200)
async def key() -> dict[str, str]:
    """The directory's public key (what nodes pin) and its id."""
    return service().key_info()


@blueprint.get("/directory/checkpoint")
@validate_querystring(CheckpointQuery)
@validate_response(CheckpointReply, 200)
@problems(400, 422, 503)
async def checkpoint(query_args: CheckpointQuery) -> dict[str, Any]:
    """The newest signed checkpoint; ``?from=SIZE`` adds a consistency proof from that size.

    ``&to=SIZE`` ends the proof at that size instead of the checkpoint's (at most it).
    """
    return await service().checkpoint(query_args.from_size, query_args.to_size)
