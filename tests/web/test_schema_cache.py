"""quart-schema with cached adapters: the same validation, errors and OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
from quart_schema import conversion
from quart_schema.validation import QuerystringValidationError, RequestSchemaValidationError

from openred.directory.app import create_app
from openred.directory.schemas import DiscoverQuery, SignedRecordBody
from openred.settings import DirectorySettings
from openred.web.schema import cache_type_adapters, type_adapter

QUERIES: list[dict[str, Any]] = [
    {}, {"node_id": "A" * 43}, {"limit": "5"}, {"limit": "0"}, {"limit": "x"},
    {"status": "active", "cursor": "B" * 43}, {"status": "gone"}, {"nope": "1"},
    {"node_id": ["a", "b"]},
]
BODIES: list[Any] = [
    {}, {"record": {}}, {"record": {"node_id": 1}, "signature": "x"}, [], "text",
    {"record": {"node_id": "A" * 43}, "signature": "s", "extra": 1},
]


def outcome(data: Any, model: type, exc: type[Exception]) -> Any:
    try:
        return conversion.model_load(data, model, exc).model_dump()
    except exc as error:
        inner = error.validation_error  # type: ignore[attr-defined]
        return ("refused", type(inner).__name__,
                inner.errors() if hasattr(inner, "errors") else str(inner))


async def openapi(app: Any) -> Any:
    response = await app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return await response.get_json()


async def test_validation_and_openapi_equal_fresh_adapters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(DirectorySettings(data_dir=tmp_path))
    cache_type_adapters()
    assert conversion.TypeAdapter is type_adapter
    cached = ([outcome(q, DiscoverQuery, QuerystringValidationError) for q in QUERIES],
              [outcome(b, SignedRecordBody, RequestSchemaValidationError) for b in BODIES],
              await openapi(app))
    other = create_app(DirectorySettings(data_dir=tmp_path))  # installs the cache again
    monkeypatch.setattr(conversion, "TypeAdapter", pydantic.TypeAdapter)
    fresh = ([outcome(q, DiscoverQuery, QuerystringValidationError) for q in QUERIES],
             [outcome(b, SignedRecordBody, RequestSchemaValidationError) for b in BODIES],
             await openapi(other))
    assert conversion.TypeAdapter is pydantic.TypeAdapter
    assert cached == fresh
    assert cached[0][0]["limit"] == 50 and cached[0][3][0] == "refused"
    assert all(b[0] == "refused" for b in cached[1])


def test_one_adapter_per_complete_model_and_pydantics_own_for_the_rest() -> None:
    assert type_adapter(DiscoverQuery) is type_adapter(DiscoverQuery)
    assert type_adapter(list[int]) is not type_adapter(list[int])
    assert type_adapter(list[int]).validate_python(["1", 2]) == [1, 2]
    assert type_adapter(dict) is type_adapter(dict)
    assert type_adapter(list) is type_adapter(list)
    assert type_adapter(dict).dump_python({"a": 1}) == {"a": 1}
    for raw in ({"a": [1, "x", None], "b": {"c": 1.5}}, [1, {"k": DiscoverQuery(limit=3)}], {},
                []):
        for mode in ("python", "json"):
            assert type_adapter(type(raw)).dump_python(raw, mode=mode) == \
                pydantic.TypeAdapter(type(raw)).dump_python(raw, mode=mode)

    class Later(pydantic.BaseModel):
        other: Other  # defined below: the model is not complete yet

    class Other(pydantic.BaseModel):
        x: int

    assert type_adapter(Later) is not type_adapter(Later)  # incomplete: never cached
