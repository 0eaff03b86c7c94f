"""``JailClient.sign_many`` and :class:`SignCoalescer` against a real jail and a fake one.

Each item gets the signature ``sign`` gives (Ed25519 is deterministic) or the refusal ``sign``
raises; callers of one turn of the event loop share one ``sign_many`` call; a failure of the
whole call reaches every caller of that batch and no other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.public
import pytest

from crypto_jail import tokens
from crypto_jail.protocol import MAX_SIGN_MANY, b64d, b64e
from openred.crypto.client import (
    ALONE_ABOVE,
    GrantToSeal,
    JailClient,
    SealedGrant,
    SignCoalescer,
)
from openred.crypto.httpsig import HttpRequest, RequestVerifier, new_nonce, sign_request
from openred.crypto.identity import BoxKey
from openred.errors import JailProtocolError, JailRefused, JailUnavailable
from tests.crypto.test_client import _fake_jail, _frame

URL = "http://127.0.0.1:8711/api/v3/tokens/receive"


async def _base(nonce: str | None = None, *, created: int | None = None) -> bytes:
    """A push's signature base as the HTTP client builds it (captured, not signed)."""
    captured: list[bytes] = []

    async def grab(base: bytes) -> bytes:
        captured.append(base)
        return bytes(64)

    await sign_request(HttpRequest("POST", URL, {"Content-Type": "application/json"}, b"{}"),
                       keyid="directory", sign_base=grab,
                       now=int(time.time()) if created is None else created,
                       nonce=nonce or new_nonce())
    return captured[0]


def _checkpoint(node_id: str) -> bytes:
    root = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    return f"openred/{node_id}\n1\n{root}\n".encode()


class _Counting:
    """Counts the jail calls of a client by operation (wraps ``call``)."""

    def __init__(self, client: JailClient) -> None:
        self.ops: list[tuple[str, int]] = []
        call = client.call

        async def counted(op: str, args: dict[str, Any], **kwargs: Any) -> Any:
            self.ops.append((op, len(args.get("items", ()))))
            return await call(op, args, **kwargs)

        client.call = counted  # type: ignore[method-assign]


async def test_sign_many_gives_what_sign_gives(client: JailClient) -> None:
    keys = await client.public_keys()
    items = [("http_signature_base", await _base()), ("entry_hash", bytes(32)),
             ("checkpoint", _checkpoint(str(keys.node_id))),
             ("http_signature_base", await _base())]
    results = await client.sign_many(items)
    for (kind, data), result in zip(items, results, strict=True):
        assert result == await client.sign(kind, data)
        keys.sign_key.verify(bytes(result), data)  # type: ignore[arg-type]


async def test_refused_items_come_back_as_the_exception_sign_raises(client: JailClient) -> None:
    good = await _base()
    stale = await _base(created=int(time.time()) - 3600)
    results = await client.sign_many([("http_signature_base", good),
                                      ("http_signature_base", stale), ("raw", bytes(32)),
                                      ("checkpoint", _checkpoint("c" * 32))])
    assert isinstance(results[0], bytes)
    for item, (kind, data) in zip(results[1:], [("http_signature_base", stale),
                                                ("raw", bytes(32)),
                                                ("checkpoint", _checkpoint("c" * 32))],
                                  strict=True):
        assert isinstance(item, JailRefused)
        with pytest.raises(JailRefused) as info:
            await client.sign(kind, data)
        assert (item.code, item.detail) == (info.value.code, info.value.detail)


async def test_more_items_than_one_call_takes_are_split(client: JailClient) -> None:
    counting = _Counting(client)
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(MAX_SIGN_MANY + 3)]
    results = await client.sign_many([("entry_hash", h) for h in hashes])
    assert results == await client.sign_batch(hashes)
    assert [n for op, n in counting.ops if op == "sign_many"] == [MAX_SIGN_MANY, 3]


async def test_concurrent_signs_share_one_call_and_each_gets_its_own(client: JailClient) -> None:
    keys = await client.public_keys()
    coalescer = SignCoalescer(client)
    counting = _Counting(client)
    bases = [await _base() for _ in range(10)]
    stale = await _base(created=int(time.time()) - 3600)

    async def one(base: bytes) -> bytes:
        return bytes(await coalescer.sign("http_signature_base", base))

    results = await asyncio.gather(*(one(b) for b in bases), one(stale), return_exceptions=True)
    assert counting.ops == [("sign_many", 11)]
    for base, signature in zip(bases, results[:10], strict=True):
        assert isinstance(signature, bytes)
        keys.sign_key.verify(signature, base)  # type: ignore[arg-type]
    assert isinstance(results[10], JailRefused)
    # A later turn is a new batch.
    keys.sign_key.verify(await one(bases[0]), bases[0])  # type: ignore[arg-type]
    assert counting.ops == [("sign_many", 11), ("sign_many", 1)]


async def test_a_signed_push_verifies(client: JailClient) -> None:
    keys = await client.public_keys()
    coalescer = SignCoalescer(client)
    body = b'{"grant":{}}'

    async def sign_base(base: bytes) -> bytes:
        return bytes(await coalescer.sign("http_signature_base", base))

    signed = await asyncio.gather(*(
        sign_request(HttpRequest("POST", URL, {"Content-Type": "application/json"}, body),
                     keyid="directory", sign_base=sign_base, now=int(time.time()),
                     nonce=new_nonce()) for _ in range(2)))
    verifier = RequestVerifier(lambda keyid: keys.sign_key if keyid == "directory" else None)
    for request in signed:
        assert verifier.verify(request, int(time.time())) == "directory"


async def test_a_cancelled_caller_leaves_the_batch_to_the_others(client: JailClient) -> None:
    keys = await client.public_keys()
    coalescer = SignCoalescer(client)
    first, second = await _base(), await _base()
    cancelled = asyncio.ensure_future(coalescer.sign("http_signature_base", first))
    kept = asyncio.ensure_future(coalescer.sign("http_signature_base", second))
    await asyncio.sleep(0)  # both joined the batch
    cancelled.cancel()
    signature = await kept
    keys.sign_key.verify(bytes(signature), second)
    assert cancelled.cancelled()


async def test_a_failed_call_fails_its_batch_only(workdir: Path) -> None:
    path = workdir / f"fake{os.getpid()}.sock"
    server = await _fake_jail(path, _frame(b'{"id": 1, "ok": true, "result": {"results": []}}'))
    try:
        async with JailClient(path, timeout=2) as broken:
            coalescer = SignCoalescer(broken)
            results = await asyncio.gather(
                coalescer.sign("entry_hash", bytes(32)), coalescer.sign("entry_hash", bytes(32)),
                return_exceptions=True)
            assert all(isinstance(r, JailProtocolError) for r in results)
    finally:
        server.close()
        await server.wait_closed()
        path.unlink(missing_ok=True)
    async with JailClient(workdir / "nobody.sock", timeout=0.2,
                          reconnect_timeout=0.2) as absent:
        with pytest.raises(JailUnavailable):
            await SignCoalescer(absent).sign("entry_hash", bytes(32))


@pytest.mark.parametrize(
    "answer",
    [
        b'{"id": 1, "ok": true, "result": {"results": [{"signature": "AA"}]}}',
        b'{"id": 1, "ok": true, "result": {"results": [{}]}}',
        b'{"id": 1, "ok": true, "result": {"results": [{"error": "refused"}]}}',
        b'{"id": 1, "ok": true, "result": {"results": [{"error": 1, "detail": "x"}]}}',
        b'{"id": 1, "ok": true, "result": {"results": [5]}}',
        b'{"id": 1, "ok": true, "result": {"results": {}}}',
        b'{"id": 1, "ok": true, "result": {"results": [{"signature": "' + b"A" * 86
        + b'", "error": "x", "detail": "y"}]}}',
        # sealed tokens answered for an item that asked for none
        b'{"id": 1, "ok": true, "result": {"results": [{"signature": "' + b"A" * 86
        + b'", "sealed_tokens": ["' + b"A" * 107 + b'", "' + b"A" * 107 + b'"]}]}}',
    ],
)
async def test_malformed_sign_many_answers_are_protocol_errors(
    workdir: Path, answer: bytes
) -> None:
    await _protocol_error(workdir, answer, lambda jail: jail.sign_many([("entry_hash",
                                                                           bytes(32))]))


async def _protocol_error(workdir: Path, answer: bytes,
                          call: Callable[[JailClient], Awaitable[Any]]) -> None:
    """``call`` on a client whose jail answers ``answer`` raises JailProtocolError."""
    path = workdir / f"fake{os.getpid()}.sock"
    server = await _fake_jail(path, _frame(answer))
    try:
        async with JailClient(path, timeout=2) as broken:
            with pytest.raises(JailProtocolError):
                await call(broken)
    finally:
        server.close()
        await server.wait_closed()
        path.unlink(missing_ok=True)



async def test_a_full_batch_starts_the_next_one(client: JailClient) -> None:
    keys = await client.public_keys()
    coalescer = SignCoalescer(client, max_batch=3)
    counting = _Counting(client)
    bases = [await _base() for _ in range(7)]
    signatures = await asyncio.gather(
        *(coalescer.sign("http_signature_base", b) for b in bases))
    assert sorted(n for _, n in counting.ops) == [1, 3, 3]
    for base, signature in zip(bases, signatures, strict=True):
        keys.sign_key.verify(bytes(signature), base)
    with pytest.raises(ValueError):
        SignCoalescer(client, max_batch=0)
    with pytest.raises(ValueError):
        SignCoalescer(client, max_batch=MAX_SIGN_MANY + 1)


async def test_an_item_no_batch_may_carry_is_refused_to_its_caller_only(
    client: JailClient,
) -> None:
    """An item too large for a batch frame used to fail the whole batch — every other caller
    of that turn got "request too large for one frame" for its own, good item. Such items, and
    items of the wrong type, are sent alone now: each caller gets what ``sign`` gives it."""
    keys = await client.public_keys()
    coalescer = SignCoalescer(client)
    counting = _Counting(client)
    goods = [await _base() for _ in range(3)]
    odd: list[tuple[Any, Any]] = [
        ("http_signature_base", b"x" * (4 * 1024 * 1024)),  # no frame carries it
        ("http_signature_base", b"x" * (ALONE_ABOVE + 1)),
        ("http_signature_base", b"x" * 9000),  # batched: the jail refuses it on its own
        ("http_signature_base", "text, not bytes"),
        (5, bytes(32)),
    ]
    results = await asyncio.gather(
        coalescer.sign("http_signature_base", goods[0]),
        *(coalescer.sign(kind, data) for kind, data in odd[:2]),
        coalescer.sign("http_signature_base", goods[1]),
        *(coalescer.sign(kind, data) for kind, data in odd[2:]),
        coalescer.sign("http_signature_base", goods[2]),
        return_exceptions=True)
    signed = [results[0], results[3], results[7]]
    for base, signature in zip(goods, signed, strict=True):
        assert isinstance(signature, bytes), signature
        keys.sign_key.verify(signature, base)  # type: ignore[arg-type]
    for (kind, data), got in zip(odd, results[1:3] + results[4:7], strict=True):
        assert isinstance(got, Exception)
        try:
            await client.sign(kind, data)
        except Exception as alone:  # what sign raises for it alone, and nothing else
            assert (type(got), str(got)) == (type(alone), str(alone))
        else:
            raise AssertionError(f"sign took {kind!r}")
    batched = [n for op, n in counting.ops if op == "sign_many"]
    assert batched == [4]  # the three good items and the 9000-byte one


async def test_a_jail_that_dies_mid_batch_gives_each_caller_its_own_signature_or_an_error(
    tmp_path: Path,
) -> None:
    """The jail is stopped with a batch sent to it, then killed: the client resends the batch
    to the restarted jail and each caller gets the signature over its own data; with no jail
    coming back, every caller of the batch gets JailUnavailable and the coalescer still works
    once a jail answers again."""
    import shutil
    import signal

    from tests.crypto_jail.test_server import dev_keystore, short_dir, spawn_jail

    work = short_dir()
    try:
        (work / "a").mkdir(mode=0o700)
        keystore, _ = dev_keystore(work / "a")
        sock = work / "a" / "s" / "j.sock"
        jail = spawn_jail(keystore, sock)
        try:
            async with JailClient(sock, timeout=5, reconnect_timeout=20) as c:
                keys = await c.public_keys()
                coalescer = SignCoalescer(c)
                sent = asyncio.Event()
                call = c.call

                async def watched(op: str, args: dict[str, Any], **kwargs: Any) -> Any:
                    if op == "sign_many":
                        sent.set()
                    return await call(op, args, **kwargs)

                c.call = watched  # type: ignore[method-assign]
                bases = [await _base() for _ in range(5)]
                os.kill(jail.pid, signal.SIGSTOP)
                waiting = asyncio.gather(*(coalescer.sign("http_signature_base", b)
                                           for b in bases))
                await sent.wait()
                for _ in range(5):  # let the frame go out to the stopped jail
                    await asyncio.sleep(0)
                os.kill(jail.pid, signal.SIGKILL)
                jail.stop()  # reaped: it was killed
                jail = spawn_jail(keystore, sock)
                signatures = await waiting
                for base, signature in zip(bases, signatures, strict=True):
                    keys.sign_key.verify(bytes(signature), base)
                # A jail that does not come back: the whole batch fails, for its callers only.
                c.reconnect_timeout = 0.5
                jail.popen.kill()
                jail.stop()
                failed = await asyncio.gather(
                    *(coalescer.sign("http_signature_base", b) for b in bases[:2]),
                    return_exceptions=True)
                assert all(isinstance(f, JailUnavailable) for f in failed), failed
                jail = spawn_jail(keystore, sock)
                c.reconnect_timeout = 20
                again = await coalescer.sign("http_signature_base", bases[0])
                keys.sign_key.verify(bytes(again), bases[0])
        finally:
            jail.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- grants the jail mints the tokens of ---------------------------------------------------------

def _grant(initiator: str, responder: str, *, issued_at: int | None = None) -> bytes:
    when = int(time.time()) if issued_at is None else issued_at
    return json.dumps({
        "v": 3, "grant_id": b64e(os.urandom(16)), "initiator": initiator,
        "responder": responder, "issued_at": when, "expires_at": when + 300,
        "suite": "25519_ChaChaPoly_SHA256", "initiator_record": b64e(os.urandom(32)),
        "responder_record": b64e(os.urandom(32)),
    }, sort_keys=True, separators=(",", ":")).encode()


def _box() -> tuple[nacl.public.PrivateKey, BoxKey]:
    private = nacl.public.PrivateKey.generate()
    return private, BoxKey(bytes(private.public_key))


async def test_a_grant_is_signed_and_its_tokens_sealed_in_the_same_batch(
    client: JailClient,
) -> None:
    """One ``sign_many`` for a grant with its tokens and the signatures proceeding with it;
    each half opens with its own node's key only, and they are the halves of that grant."""
    keys = await client.public_keys()
    coalescer = SignCoalescer(client)
    counting = _Counting(client)
    (a_private, a_box), (b_private, b_box) = _box(), _box()
    grant = _grant("a" * 32, "b" * 32)
    base = await _base()
    sealed, signature = await asyncio.gather(
        coalescer.sign_grant(GrantToSeal(grant, a_box, b_box)),
        coalescer.sign("http_signature_base", base))
    assert counting.ops == [("sign_many", 2)]
    assert isinstance(sealed, SealedGrant)
    keys.sign_key.verify(bytes(sealed.signature), grant)  # type: ignore[arg-type]
    keys.sign_key.verify(bytes(signature), base)  # type: ignore[arg-type]
    token_a = nacl.public.SealedBox(a_private).decrypt(sealed.sealed_initiator)
    token_b = nacl.public.SealedBox(b_private).decrypt(sealed.sealed_responder)
    with pytest.raises(nacl.exceptions.CryptoError):
        nacl.public.SealedBox(b_private).decrypt(sealed.sealed_initiator)
    grant_id = b64d(json.loads(grant)["grant_id"])
    assert tokens.tokens_match(token_a, token_b, grant_id, tokens.grant_hash(grant))


async def test_a_grant_the_jail_refuses_raises_for_its_caller_only(client: JailClient) -> None:
    coalescer = SignCoalescer(client)
    (_, box) = _box()
    stale = _grant("a" * 32, "b" * 32, issued_at=int(time.time()) - 3600)
    refused, signature = await asyncio.gather(
        coalescer.sign_grant(GrantToSeal(stale, box, box)),
        coalescer.sign("entry_hash", bytes(32)), return_exceptions=True)
    assert isinstance(refused, JailRefused) and refused.code == "refused"
    assert isinstance(signature, bytes)
    with pytest.raises(JailRefused):
        await client.sign_grant(GrantToSeal(stale, box, box))


_SIG = b'"' + b"A" * 86 + b'"'
_SEALED = b'"' + b"A" * 107 + b'"'


@pytest.mark.parametrize(
    "result",
    [
        b'{"signature": ' + _SIG + b"}",  # no tokens
        b'{"signature": ' + _SIG + b', "sealed_tokens": [' + _SEALED + b"]}",
        b'{"signature": ' + _SIG + b', "sealed_tokens": [' + _SEALED + b", " + _SEALED + b", "
        + _SEALED + b"]}",
        b'{"signature": ' + _SIG + b', "sealed_tokens": [' + _SEALED + b', "AAAA"]}',
        b'{"signature": ' + _SIG + b', "sealed_tokens": [' + _SEALED + b", 7]}",
        b'{"signature": ' + _SIG + b', "sealed_tokens": "' + b"A" * 20 + b'"}',
        b'{"signature": ' + _SIG + b', "sealed_tokens": [' + _SEALED + b", " + _SEALED
        + b'], "token": "x"}',
    ],
    ids=["no-tokens", "one-token", "three-tokens", "short-token", "number", "string", "extra"],
)
async def test_malformed_sealed_grant_answers_are_protocol_errors(
    workdir: Path, result: bytes
) -> None:
    (_, box) = _box()
    grant = GrantToSeal(_grant("a" * 32, "b" * 32), box, box)
    await _protocol_error(
        workdir, b'{"id": 1, "ok": true, "result": {"results": [' + result + b"]}}",
        lambda jail: jail.sign_grant(grant))

