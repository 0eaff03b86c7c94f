"""The verifier's fast path builds exactly the library's signature base, and decides the same."""

from __future__ import annotations

import dataclasses
import random
import string

import nacl.signing
import pytest

from openred.crypto.httpsig import (
    HttpRequest,
    NonceCache,
    RequestVerifier,
    _Ed25519,
    _InjectedClockVerifier,
    _Message,
    _OneKey,
    fast_signature_base,
    new_nonce,
    sign_request,
)
from openred.crypto.identity import SignKey
from openred.errors import RequestSignatureError

NOW = 1_700_000_000
_SEGMENT = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"


def _random_url(rng: random.Random) -> str:
    scheme = rng.choice(["http", "https"])
    host = rng.choice(["dir.example", "127.0.0.1", "a-b.c.example", "LOCALHOST", "x"])
    port = rng.choice(["", ":80", ":443", ":8443", ":1", ":65535", ":0080"])
    segments = []
    for _ in range(rng.randint(0, 4)):
        seg = "".join(rng.choice(_SEGMENT) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.3:
            seg += "%" + rng.choice(["2F", "20", "e9", "41"])
        segments.append(seg)
    url = f"{scheme}://{host}{port}/" + "/".join(segments)
    if rng.random() < 0.5:
        query = "&".join(
            f"{''.join(rng.choice(_SEGMENT) for _ in range(3))}="
            f"{''.join(rng.choice(_SEGMENT + '/?') for _ in range(rng.randint(0, 6)))}"
            for _ in range(rng.randint(0, 3))
        )
        url += "?" + query
    return url


def _library_base(req: HttpRequest, key: SignKey) -> bytes:
    """The base the library verifies for ``req`` (its own code path, captured)."""
    seen: list[bytes] = []

    class Capture(_Ed25519):
        def verify(self, signature: bytes, message: bytes) -> None:
            seen.append(message)
            super().verify(signature, message)

    verifier = _InjectedClockVerifier(signature_algorithm=Capture, key_resolver=_OneKey(key))
    verifier.verify(_Message(req.method, req.url, dict(req.headers)), max_age=None)
    (base,) = seen
    return base


@pytest.mark.parametrize("seed", range(4))
async def test_fast_base_is_the_library_base_for_random_requests(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        key = nacl.signing.SigningKey(rng.randbytes(32))
        public = SignKey(bytes(key.verify_key))
        keyid = rng.choice([str(public.node_id), "directory"])

        async def sign(base: bytes, key: nacl.signing.SigningKey = key) -> bytes:
            return bytes(key.sign(base).signature)

        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
        body = rng.randbytes(rng.choice([0, 1, 17, 300]))
        created = rng.choice([0, 1, NOW, 253_402_300_799, rng.randrange(253_402_300_799)])
        nonce = "".join(rng.choice(string.ascii_letters + string.digits + "-_")
                        for _ in range(rng.randint(16, 128)))
        req = await sign_request(HttpRequest(method, _random_url(rng), {"X-A": "b"}, body),
                                 keyid=keyid, sign_base=sign, now=created, nonce=nonce)
        fast = fast_signature_base(req)
        assert fast is not None, req
        assert fast == _library_base(req, public)
        verifier = RequestVerifier({keyid: public}.get, window_seconds=60)
        assert verifier._verify_fast(req, created) == keyid


async def test_anything_else_goes_the_general_way() -> None:
    key = nacl.signing.SigningKey.generate()
    public = SignKey(bytes(key.verify_key))
    keyid = str(public.node_id)

    async def sign(base: bytes) -> bytes:
        return bytes(key.sign(base).signature)

    req = await sign_request(HttpRequest("POST", "https://d.example/x", {}, b"{}"),
                             keyid=keyid, sign_base=sign, now=NOW, nonce=new_nonce())
    assert fast_signature_base(req) is not None
    headers = dict(req.headers)
    variants = [
        {**headers, "Signature": headers["Signature"] + " "},
        {**headers, "signature-input": headers["Signature-Input"]},  # two field lines
        {**headers, "Signature-Input": headers["Signature-Input"].replace("openred", "x")},
        {**headers, "Content-Digest": headers["Content-Digest"] + ", sha-512=:AA==:"},
    ]
    for variant in variants:
        assert fast_signature_base(dataclasses.replace(req, headers=variant)) is None
    for url in ("https://d.example", "https://[::1]/x", "https://u@d.example/x",
                "https://d.example/x#f", "https://d.example/%zz"):
        assert fast_signature_base(dataclasses.replace(req, url=url)) is None
    assert fast_signature_base(dataclasses.replace(req, method="post")) is None


async def test_a_failure_on_the_fast_path_is_decided_and_explained_by_the_general_one() -> None:
    key = nacl.signing.SigningKey.generate()
    public = SignKey(bytes(key.verify_key))
    keyid = str(public.node_id)

    async def sign(base: bytes) -> bytes:
        return bytes(key.sign(base).signature)

    req = await sign_request(HttpRequest("POST", "https://d.example/x", {}, b"{}"),
                             keyid=keyid, sign_base=sign, now=NOW, nonce=new_nonce())
    cache = NonceCache()
    verifier = RequestVerifier({keyid: public}.get, nonce_cache=cache)
    with pytest.raises(RequestSignatureError, match="content-digest does not match"):
        verifier.verify(dataclasses.replace(req, body=b"{ }"), NOW)
    with pytest.raises(RequestSignatureError, match="bad signature"):
        verifier.verify(dataclasses.replace(req, url="https://d.example/y"), NOW)
    with pytest.raises(RequestSignatureError, match="older than the window"):
        verifier.verify(req, NOW + 61)
    assert len(cache) == 0  # no failure burned the nonce
    assert verifier.verify(req, NOW) == keyid
    with pytest.raises(RequestSignatureError, match="replayed"):
        verifier.verify(req, NOW)


@pytest.mark.parametrize("seed", range(3))
async def test_fast_signing_writes_exactly_the_library_headers(seed: int) -> None:
    from openred.crypto.httpsig import _SIGNATURE_FIELDS, _sign_library

    rng = random.Random(100 + seed)
    for _ in range(150):
        key = nacl.signing.SigningKey(rng.randbytes(32))
        bases: list[bytes] = []

        async def sign(base: bytes, key: nacl.signing.SigningKey = key,
                       bases: list[bytes] = bases) -> bytes:
            bases.append(base)
            return bytes(key.sign(base).signature)

        keyid = rng.choice([str(SignKey(bytes(key.verify_key)).node_id), "directory"])
        headers = rng.choice([{}, {"X-A": "b"}, {"content-digest": "old", "Signature": "x"},
                              {"Accept": "application/json", "Content-Type": "text/plain"}])
        req = HttpRequest(rng.choice(["GET", "POST", "DELETE", "OPTIONS"]), _random_url(rng),
                          headers, rng.randbytes(rng.choice([0, 5, 200])))
        created = rng.choice([0, NOW, 253_402_300_799, rng.randrange(253_402_300_799)])
        nonce = new_nonce()
        fast = await sign_request(req, keyid=keyid, sign_base=sign, now=created, nonce=nonce)
        kept = {k: v for k, v in req.headers.items() if k.lower() not in _SIGNATURE_FIELDS}
        slow = await _sign_library(req, kept, keyid=keyid, sign_base=sign, now=created,
                                   nonce=nonce)
        assert bases[0] == bases[1]
        assert list(fast.headers.items()) == list(slow.headers.items())
        assert fast == slow
        assert req.headers == headers  # the input is left alone


async def test_signing_past_year_9999_is_refused_as_before() -> None:
    async def sign(base: bytes) -> bytes:
        return bytes(64)

    with pytest.raises(RequestSignatureError, match="cannot sign request"):
        await sign_request(HttpRequest("GET", "https://d.example/x"), keyid="directory",
                           sign_base=sign, now=253_402_300_800, nonce=new_nonce())


async def test_a_signature_checked_ahead_counts_only_for_its_request_and_key() -> None:
    """CheckedSignature (a SignatureChecker's outcome, off the event loop) decides the fast
    path's Ed25519 check for exactly that request object and key; otherwise it verifies inline,
    and a "not valid" never refuses a good signature (the general path decides)."""
    from openred.crypto.httpsig import CheckedSignature, fast_parts

    key = nacl.signing.SigningKey.generate()
    public = SignKey(bytes(key.verify_key))
    other = SignKey(bytes(nacl.signing.SigningKey.generate().verify_key))
    keyid = str(public.node_id)

    async def sign(base: bytes) -> bytes:
        return bytes(key.sign(base).signature)

    async def signed(sign_base: object = sign) -> HttpRequest:
        return await sign_request(HttpRequest("POST", "https://d.example/x", {}, b"{}"),
                                  keyid=keyid, sign_base=sign_base,  # type: ignore[arg-type]
                                  now=NOW, nonce=new_nonce())

    def verifier() -> RequestVerifier:
        return RequestVerifier({keyid: public}.get, window_seconds=60)

    good = await signed()
    parts = fast_parts(good)
    assert parts is not None
    # Checked valid: used, no inline check needed.
    assert verifier().verify(good, NOW, checked=CheckedSignature(good, parts, public.raw, True)) \
        == keyid
    # Checked "not valid" for a good signature: the general path verifies it (accepted).
    assert verifier().verify(good, NOW,
                             checked=CheckedSignature(good, parts, public.raw, False)) == keyid

    async def bad_sign(base: bytes) -> bytes:
        return bytes(nacl.signing.SigningKey.generate().sign(base).signature)

    bad = await signed(bad_sign)
    bad_parts = fast_parts(bad)
    assert bad_parts is not None
    # "Valid" said of another request object, or under another key: ignored, verified inline.
    for checked in (CheckedSignature(good, bad_parts, public.raw, True),
                    CheckedSignature(bad, bad_parts, other.raw, True)):
        with pytest.raises(RequestSignatureError):
            verifier().verify(bad, NOW, checked=checked)
    with pytest.raises(RequestSignatureError):
        verifier().verify(bad, NOW, checked=CheckedSignature(bad, bad_parts, public.raw, False))
