"""quart-schema's pydantic adapters, made once per model instead of once per validation.

quart-schema validates every request body and query with
``TypeAdapter(model_class).validate_python(data)`` (``quart_schema.conversion.model_load``):
a new ``TypeAdapter`` per request, about 10 µs each (it reads its caller's frame namespace to
resolve forward references, then takes the model's own validator). For a *complete* pydantic
model (``__pydantic_complete__``) an adapter is nothing but the model's own core schema,
validator and serializer, whatever namespace it was made in, so one adapter per model class
validates, dumps and describes exactly like a fresh one. The same holds for bare ``dict`` and
``list``, which quart-schema adapts to dump every dict or list a route returns (building their
schema anew each time, ~30 µs).

:func:`cache_type_adapters` hands quart-schema such a cached adapter: it replaces the
``TypeAdapter`` name in ``quart_schema.conversion`` (the only name quart-schema builds adapters
through) with :func:`type_adapter`, which returns the cached adapter for complete model classes
and builds pydantic's own adapter, from the same caller frame, for anything else. quart-schema
still validates every body and query itself (tested, with ``/openapi.json`` unchanged).
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, TypeAdapter

__all__ = ["cache_type_adapters", "type_adapter"]

_ADAPTERS: dict[type[BaseModel], TypeAdapter[Any]] = {}
_MAX_ADAPTERS: Final = 1024
_PLAIN: dict[type, TypeAdapter[Any]] = {}


def type_adapter(type_: Any, *args: Any, **kwargs: Any) -> TypeAdapter[Any]:
    """``TypeAdapter(type_, …)``, one per complete pydantic model class."""
    if (not args and not kwargs and isinstance(type_, type) and issubclass(type_, BaseModel)
            and type_.__dict__.get("__pydantic_complete__", False)):
        adapter = _ADAPTERS.get(type_)
        if adapter is None:
            if len(_ADAPTERS) >= _MAX_ADAPTERS:
                _ADAPTERS.clear()
            adapter = _ADAPTERS[type_] = TypeAdapter(type_)
        return adapter
    if not args and not kwargs and (type_ is dict or type_ is list):
        # quart-schema dumps every dict or list a route returns through TypeAdapter(type(raw)):
        # bare dict and list have one fixed schema (any keys, any values), whatever the frame.
        plain = _PLAIN.get(type_)
        if plain is None:
            plain = _PLAIN[type_] = TypeAdapter(type_)
        return plain
    kwargs.setdefault("_parent_depth", 3)  # the frame that called us, as pydantic would see it
    return TypeAdapter(type_, *args, **kwargs)


def cache_type_adapters() -> None:
    """Have quart-schema build its adapters through :func:`type_adapter` (idempotent)."""
    from quart_schema import conversion

    setattr(conversion, "TypeAdapter", type_adapter)  # noqa: B010 (a module global)
