"""Reading a complete body without Quart's timer task, and joining header lines in one pass."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from quart import Quart, request
from werkzeug.datastructures import Headers

from openred.web.problems import CompleteBody, JsonRequest, install
from openred.web.signatures import _joined_headers


def body_app() -> Quart:
    app = Quart("body")
    app.config["MAX_CONTENT_LENGTH"] = 64
    install(app)

    @app.post("/echo")
    async def echo() -> dict[str, Any]:
        assert isinstance(request.body, CompleteBody)
        raw = await request.get_data()
        text = await request.get_data(as_text=True)
        again = await request.get_data(cache=True)
        parsed = await request.get_json()
        return {"raw": raw.hex(), "text": text, "again": again == raw, "json": parsed}

    @app.post("/uncached")
    async def uncached() -> dict[str, Any]:
        first = await request.get_data(cache=False)
        return {"first": first.hex(), "second": (await request.get_data()).hex()}

    return app


async def test_a_complete_body_reads_the_same_as_through_quart() -> None:
    client = body_app().test_client()
    reply = await client.post("/echo", data=b'{"a": 1}', headers={"Content-Type":
                                                                   "application/json"})
    assert reply.status_code == 200
    assert await reply.get_json() == {"raw": b'{"a": 1}'.hex(), "text": '{"a": 1}',
                                      "again": True, "json": {"a": 1}}
    # cache=False empties the body afterwards, as Quart's get_data does.
    reply = await body_app().test_client().post("/uncached", data=b"abc")
    assert await reply.get_json() == {"first": b"abc".hex(), "second": ""}


async def test_a_body_over_the_limit_is_still_413() -> None:
    reply = await body_app().test_client().post(
        "/echo", data=b"x" * 65, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    assert reply.content_type == "application/problem+json"


def fresh_request(max_length: int | None = None, length: int | None = None) -> JsonRequest:
    async def push(path: str, headers: Headers) -> None:
        return None

    headers = Headers()
    if length is not None:
        headers["Content-Length"] = str(length)
    return JsonRequest("POST", "http", "/", b"", headers, "", "1.1",
                       {"type": "http"},  # type: ignore[arg-type]
                       max_content_length=max_length, body_timeout=5,
                       send_push_promise=push)


async def test_a_body_still_arriving_waits_through_quarts_path() -> None:
    req = fresh_request()
    assert not req.body.complete()  # type: ignore[attr-defined]
    reading = asyncio.ensure_future(req.get_data())
    await asyncio.sleep(0)
    assert not reading.done()
    req.body.append(b"part one, ")
    req.body.append(b"part two")
    req.body.set_complete()
    assert await reading == b"part one, part two"
    assert await req.get_data(as_text=True) == "part one, part two"


async def test_a_body_refused_while_arriving_raises_like_quart() -> None:
    from werkzeug.exceptions import RequestEntityTooLarge

    req = fresh_request(max_length=4)
    req.body.append(b"too long")
    assert req.body.complete()  # type: ignore[attr-defined]
    with pytest.raises(RequestEntityTooLarge):
        await req.get_data()
    declared = fresh_request(max_length=4, length=10)
    with pytest.raises(RequestEntityTooLarge):
        await declared.get_data()


def old_join(headers: Headers) -> dict[str, str]:
    names = {name for name, _ in headers.items()}
    return {name: ", ".join(headers.getlist(name)) for name in names}


def test_joined_headers_equal_the_getlist_join_over_random_headers() -> None:
    rng = random.Random(3)
    names = ["Signature", "Signature-Input", "Content-Digest", "Content-Type", "Accept",
             "X-Request-Id", "Host"]
    for _ in range(300):
        headers = Headers()
        for _ in range(rng.randint(0, 12)):
            headers.add(rng.choice(names), "".join(rng.choice("ab, =:") for _ in range(5)))
        assert _joined_headers(headers.items()) == old_join(headers)


def test_names_differing_only_in_case_are_merged_under_the_first_spelling() -> None:
    joined = _joined_headers([("X-A", "1"), ("x-a", "2"), ("B", "3")])
    assert joined == {"X-A": "1, 2", "B": "3"}
