"""RFC 9421 request signatures in OpenRed's profile (DESIGN §3), with every rejection."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib

import nacl.signing
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_jail.structures import is_http_signature_base
from openred.crypto.httpsig import (
    HttpRequest,
    NonceCache,
    RequestVerifier,
    SignBase,
    new_nonce,
    sign_request,
)
from openred.crypto.identity import SignKey
from openred.errors import NonceCacheFull, RequestSignatureError, ServiceBusy

NOW = 1_700_000_000
URL = "https://dir.example:8443/api/v3/nodes/register"
BODY = b'{"api_url":"https://a.example"}'


class Signer:
    """Test stand-in for the jail: a PyNaCl key that records the bases it was asked to sign."""

    def __init__(self) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.public = SignKey(bytes(self.key.verify_key))
        self.node_id = str(self.public.node_id)
        self.bases: list[bytes] = []

    async def __call__(self, base: bytes) -> bytes:
        self.bases.append(base)
        return bytes(self.key.sign(base).signature)


@pytest.fixture
def signer() -> Signer:
    return Signer()


def verifier_for(*signers: Signer, window: int = 60) -> RequestVerifier:
    keys = {s.node_id: s.public for s in signers}
    return RequestVerifier(keys.get, window_seconds=window)


async def signed(
    signer: Signer,
    *,
    method: str = "POST",
    url: str = URL,
    body: bytes = BODY,
    now: int = NOW,
    nonce: str | None = None,
    keyid: str | None = None,
) -> HttpRequest:
    req = HttpRequest(method, url, {"Content-Type": "application/json"}, body)
    return await sign_request(
        req, keyid=keyid or signer.node_id, sign_base=signer, now=now, nonce=nonce or new_nonce()
    )


def with_header(req: HttpRequest, name: str, value: str | None) -> HttpRequest:
    headers = {k: v for k, v in req.headers.items() if k.lower() != name.lower()}
    if value is not None:
        headers[name] = value
    return dataclasses.replace(req, headers=headers)


def reject(verifier: RequestVerifier, req: HttpRequest, reason: str, now: int = NOW) -> None:
    with pytest.raises(RequestSignatureError, match=reason):
        verifier.verify(req, now)


# --- round trip ----------------------------------------------------------------------------


async def test_sign_then_verify_returns_keyid(signer: Signer) -> None:
    req = await signed(signer)
    assert verifier_for(signer).verify(req, NOW) == signer.node_id
    digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert req.header("content-digest") == f"sha-256=:{digest}:"
    assert req.header("Signature-Input").startswith(  # type: ignore[union-attr]
        'openred=("@method" "@target-uri" "content-digest");created=1700000000;'
        f'keyid="{signer.node_id}";alg="ed25519";nonce="'
    )
    assert req.header("Signature").startswith("openred=:")  # type: ignore[union-attr]
    assert req.header("content-type") == "application/json"


async def test_signature_base_is_what_the_jail_accepts(signer: Signer) -> None:
    await signed(signer, nonce="n" * 22)
    (base,) = signer.bases
    assert is_http_signature_base(base)
    digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert base == (
        f'"@method": POST\n"@target-uri": {URL}\n"content-digest": sha-256=:{digest}:\n'
        '"@signature-params": ("@method" "@target-uri" "content-digest");created=1700000000;'
        f'keyid="{signer.node_id}";alg="ed25519";nonce="{"n" * 22}"'
    ).encode()


async def test_directory_keyid_and_empty_body(signer: Signer) -> None:
    req = await signed(signer, keyid="directory", method="GET", body=b"")
    verifier = RequestVerifier(lambda k: signer.public if k == "directory" else None)
    assert verifier.verify(req, NOW) == "directory"


async def test_header_names_are_case_insensitive(signer: Signer) -> None:
    req = await signed(signer)
    lowered = dataclasses.replace(req, headers={k.lower(): v for k, v in req.headers.items()})
    assert verifier_for(signer).verify(lowered, NOW) == signer.node_id


async def test_signing_does_not_change_the_input_and_replaces_old_signatures(
    signer: Signer,
) -> None:
    original = HttpRequest("POST", URL, {"signature": "stale", "Content-Digest": "x"}, BODY)
    req = await sign_request(original, keyid=signer.node_id, sign_base=signer, now=NOW,
                             nonce=new_nonce())
    assert original.headers == {"signature": "stale", "Content-Digest": "x"}
    assert "signature" not in req.headers and "Content-Digest" in req.headers
    assert verifier_for(signer).verify(req, NOW) == signer.node_id


async def test_a_library_signed_request_in_our_profile_verifies() -> None:
    # Interoperability: the library's own cryptography-backed Ed25519 signer.
    private = ed25519.Ed25519PrivateKey.generate()
    public = SignKey(private.public_key().public_bytes_raw())
    keyid = str(public.node_id)
    msg = _Msg("PUT", URL, {})
    HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={keyid: private}),
    ).sign(
        msg, key_id=keyid, created=datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC),
        nonce=new_nonce(), covered_component_ids=("@method", "@target-uri", "content-digest"),
        body=BODY, label="other",
    )
    req = HttpRequest(msg.method, msg.url, msg.headers, BODY)
    assert RequestVerifier({keyid: public}.get).verify(req, NOW) == keyid


class _Msg:
    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


def library_signed(
    signer: Signer, covered: tuple[str, ...], **params: object
) -> HttpRequest:
    """A request signed with arbitrary components/parameters, to reach verifier branches."""
    digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    # A correct Content-Digest is always present; only `covered` decides whether it is signed.
    msg = _Msg("POST", URL, {"Content-Digest": f"sha-256=:{digest}:"})
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(signer.key))
    HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={signer.node_id: private}),
    ).sign(
        msg, key_id=signer.node_id,
        created=datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC),
        covered_component_ids=covered, use_existing_digest=True,
        **params,  # type: ignore[arg-type]
    )
    return HttpRequest(msg.method, msg.url, msg.headers, BODY)


# --- tampering -----------------------------------------------------------------------------


async def test_tampered_body(signer: Signer) -> None:
    req = await signed(signer)
    reject(verifier_for(signer), dataclasses.replace(req, body=BODY + b" "),
           "content-digest does not match")


async def test_tampered_body_with_matching_digest_header(signer: Signer) -> None:
    req = await signed(signer)
    body = b'{"api_url":"https://evil.example"}'
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    forged = with_header(dataclasses.replace(req, body=body), "Content-Digest",
                         f"sha-256=:{digest}:")
    reject(verifier_for(signer), forged, "bad signature")


@pytest.mark.parametrize(
    "change",
    [
        {"method": "PUT"},
        {"url": URL.replace("register", "deregister")},
        {"url": URL + "?x=1"},
        {"url": URL.replace("dir.example", "evil.example")},
        {"url": URL.replace("https", "http")},
    ],
)
async def test_tampered_method_or_target(signer: Signer, change: dict[str, str]) -> None:
    req = await signed(signer)
    reject(verifier_for(signer), dataclasses.replace(req, **change),  # type: ignore[arg-type]
           "bad signature")


async def test_tampered_signature_bytes(signer: Signer) -> None:
    req = await signed(signer)
    raw = bytearray(base64.b64decode(req.header("Signature")[len("openred=:"):-1]))  # type: ignore[index]
    raw[0] ^= 1
    bad = with_header(req, "Signature", f"openred=:{base64.b64encode(bytes(raw)).decode()}:")
    reject(verifier_for(signer), bad, "bad signature")


async def test_tampered_signature_params(signer: Signer) -> None:
    req = await signed(signer)
    sig_input = req.header("Signature-Input")
    assert sig_input is not None
    moved = with_header(req, "Signature-Input", sig_input.replace("created=1700000000",
                                                                   "created=1700000001"))
    reject(verifier_for(signer), moved, "bad signature")


async def test_wrong_key(signer: Signer) -> None:
    other = Signer()
    req = await signed(signer)
    # The verifier maps this keyid to a different public key.
    verifier = RequestVerifier(lambda k: other.public)
    reject(verifier, req, "bad signature")


async def test_signed_by_other_node_claiming_our_keyid(signer: Signer) -> None:
    impostor = Signer()
    req = await signed(impostor, keyid=signer.node_id)
    reject(verifier_for(signer, impostor), req, "bad signature")


async def test_unknown_key(signer: Signer) -> None:
    req = await signed(signer)
    reject(verifier_for(Signer()), req, "unknown key")


# --- time and replay -----------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-60, -1, 0, 1, 60])
async def test_created_inside_the_window_is_accepted(signer: Signer, skew: int) -> None:
    req = await signed(signer, now=NOW + skew)
    assert verifier_for(signer).verify(req, NOW) == signer.node_id


async def test_created_too_old(signer: Signer) -> None:
    req = await signed(signer, now=NOW - 61)
    reject(verifier_for(signer), req, "older than the window")


async def test_created_in_the_future(signer: Signer) -> None:
    req = await signed(signer, now=NOW + 61)
    reject(verifier_for(signer), req, "in the future")


async def test_window_is_configurable(signer: Signer) -> None:
    req = await signed(signer, now=NOW - 100)
    reject(verifier_for(signer), req, "older than the window")
    assert verifier_for(signer, window=120).verify(req, NOW) == signer.node_id


async def test_replay_inside_the_window(signer: Signer) -> None:
    req = await signed(signer)
    verifier = verifier_for(signer)
    assert verifier.verify(req, NOW) == signer.node_id
    reject(verifier, req, "nonce replayed", now=NOW + 30)
    reject(verifier, req, "nonce replayed", now=NOW + 60)
    # Once the window has passed the created check alone refuses it.
    reject(verifier, req, "older than the window", now=NOW + 61)


async def test_same_nonce_from_two_signers_is_not_a_replay(signer: Signer) -> None:
    other = Signer()
    verifier = verifier_for(signer, other)
    assert verifier.verify(await signed(signer, nonce="x" * 20), NOW) == signer.node_id
    assert verifier.verify(await signed(other, nonce="x" * 20), NOW) == other.node_id


async def test_forged_request_does_not_burn_the_nonce(signer: Signer) -> None:
    req = await signed(signer)
    verifier = verifier_for(signer)
    reject(verifier, dataclasses.replace(req, method="PUT"), "bad signature")
    assert verifier.verify(req, NOW) == signer.node_id


# --- malformed and missing -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["Signature-Input", "Signature", "Content-Digest"])
async def test_missing_header(signer: Signer, name: str) -> None:
    req = await signed(signer)
    reject(verifier_for(signer), with_header(req, name, None), f"missing {name}")


@pytest.mark.parametrize("name", ["Signature-Input", "Signature", "Content-Digest"])
async def test_oversized_header(signer: Signer, name: str) -> None:
    req = await signed(signer)
    huge = (req.header(name) or "") + "," + "a" * 3000
    reject(verifier_for(signer), with_header(req, name, huge), "longer than")


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("Signature-Input", "garbage ((", "malformed Signature-Input"),
        ("Signature-Input", "openred=\"not a list\"", "not an inner list"),
        ("Signature-Input", "openred=();created=1700000000", "does not cover"),
        ("Signature-Input", "é", "malformed Signature-Input"),
        ("Signature", "openred=\"text\"", "bad signature"),
        ("Signature", "openred=:AAAA:", "bad signature"),
        ("Signature", "other=:AAAA:", "bad signature"),
        ("Signature", "((", "bad signature"),
        ("Content-Digest", "sha-256=:AAAA:", "bad signature"),
        ("Content-Digest", "nonsense", "bad signature"),
    ],
)
async def test_malformed_headers(signer: Signer, name: str, value: str, reason: str) -> None:
    req = await signed(signer)
    reject(verifier_for(signer), with_header(req, name, value), reason)


async def test_two_signatures_are_refused(signer: Signer) -> None:
    req = await signed(signer)
    sig_input, sig = req.header("Signature-Input"), req.header("Signature")
    assert sig_input is not None and sig is not None
    two = with_header(with_header(req, "Signature-Input",
                                  sig_input + ", " + sig_input.replace("openred=", "b=")),
                      "Signature", sig + ", " + sig.replace("openred=", "b="))
    reject(verifier_for(signer), two, "exactly one signature")


def test_missing_nonce(signer: Signer) -> None:
    req = library_signed(signer, ("@method", "@target-uri", "content-digest"))
    reject(verifier_for(signer), req, "nonce missing")


@pytest.mark.parametrize("nonce", ["short", "has space in it 1234", "x" * 129])
def test_malformed_nonce(signer: Signer, nonce: str) -> None:
    req = library_signed(signer, ("@method", "@target-uri", "content-digest"), nonce=nonce)
    reject(verifier_for(signer), req, "nonce must be")


@pytest.mark.parametrize(
    "covered",
    [("@method", "@target-uri"), ("@method", "content-digest"), ("@target-uri", "content-digest")],
)
def test_required_components_missing(signer: Signer, covered: tuple[str, ...]) -> None:
    req = library_signed(signer, covered, nonce=new_nonce())
    reject(verifier_for(signer), req, "does not cover")


def test_parameterized_component_does_not_count(signer: Signer) -> None:
    req = library_signed(
        signer, ("@method", "@target-uri", '"content-digest";key="sha-256"'), nonce=new_nonce()
    )
    reject(verifier_for(signer), req, "does not cover content-digest")


def test_extra_covered_components_are_fine(signer: Signer) -> None:
    req = library_signed(signer, ("@method", "@target-uri", "@authority", "content-digest"),
                         nonce=new_nonce())
    assert verifier_for(signer).verify(req, NOW) == signer.node_id


def test_wrong_alg(signer: Signer) -> None:
    req = library_signed(signer, ("@method", "@target-uri", "content-digest"), nonce=new_nonce())
    sig_input = req.header("Signature-Input") or ""
    assert 'alg="ed25519"' in sig_input
    reject(verifier_for(signer),
           with_header(req, "Signature-Input", sig_input.replace("ed25519", "hmac-sha256")),
           "alg must be")


def test_missing_alg(signer: Signer) -> None:
    req = library_signed(signer, ("@method", "@target-uri", "content-digest"), nonce=new_nonce(),
                         include_alg=False)
    reject(verifier_for(signer), req, "alg must be")


def test_unexpected_parameter(signer: Signer) -> None:
    req = library_signed(signer, ("@method", "@target-uri", "content-digest"), nonce=new_nonce(),
                         tag="x")
    reject(verifier_for(signer), req, "unexpected signature parameters")


async def test_missing_keyid_and_created(signer: Signer) -> None:
    req = await signed(signer)
    sig_input = req.header("Signature-Input") or ""
    no_keyid = sig_input.replace(f';keyid="{signer.node_id}"', "")
    reject(verifier_for(signer), with_header(req, "Signature-Input", no_keyid), "keyid missing")
    no_created = sig_input.replace(";created=1700000000", "")
    reject(verifier_for(signer), with_header(req, "Signature-Input", no_created), "created missing")
    text_created = sig_input.replace("created=1700000000", 'created="1700000000"')
    reject(verifier_for(signer), with_header(req, "Signature-Input", text_created),
           "created missing")


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["Signature-Input", "Signature", "Content-Digest"]),
    value=st.text(max_size=300),
    method=st.sampled_from(["POST", "post", "", "P OST"]),
    url=st.sampled_from([URL, "not a url", "https://", "https://h/\u00e9"]),
)
def test_garbage_only_ever_raises_request_signature_error(
    name: str, value: str, method: str, url: str
) -> None:
    headers = {
        "Signature-Input": 'openred=("@method" "@target-uri" "content-digest");created=1700000000;'
        f'keyid="{"a" * 32}";alg="ed25519";nonce="{"n" * 22}"',
        "Signature": "openred=:" + base64.b64encode(b"\x00" * 64).decode() + ":",
        "Content-Digest": "sha-256=:" + base64.b64encode(b"\x00" * 32).decode() + ":",
    }
    headers[name] = value
    key = SignKey(b"\x01" * 32)
    verifier = RequestVerifier(lambda k: key)
    with pytest.raises(RequestSignatureError):
        verifier.verify(HttpRequest(method, url, headers, b"x"), NOW)


# --- signing-side refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"keyid": "Not-A-Node"}, "keyid"),
        ({"nonce": "short"}, "nonce"),
        ({"nonce": "bad nonce with spaces!"}, "nonce"),
        ({"now": -1}, "created"),
    ],
)
async def test_sign_request_refuses_bad_inputs(
    signer: Signer, kwargs: dict[str, object], reason: str
) -> None:
    args: dict[str, object] = {"keyid": signer.node_id, "sign_base": signer, "now": NOW,
                               "nonce": new_nonce()}
    args.update(kwargs)
    with pytest.raises(RequestSignatureError, match=reason):
        await sign_request(HttpRequest("POST", URL, {}, BODY), **args)  # type: ignore[arg-type]
    assert signer.bases == []


@pytest.mark.parametrize(
    ("method", "url"), [("post", URL), ("POST", "ftp://h/x"), ("POST", "/relative"),
                        ("POST", "https://h/a b")]
)
async def test_sign_request_refuses_bad_requests(signer: Signer, method: str, url: str) -> None:
    with pytest.raises(RequestSignatureError, match="cannot sign"):
        await signed(signer, method=method, url=url)
    assert signer.bases == []


async def test_sign_request_refuses_bad_signer_output(signer: Signer) -> None:
    async def short(base: bytes) -> bytes:
        return b"\x00" * 63

    bad: SignBase = short
    with pytest.raises(RequestSignatureError, match="64-byte"):
        await sign_request(HttpRequest("POST", URL, {}, BODY), keyid=signer.node_id,
                           sign_base=bad, now=NOW, nonce=new_nonce())


def test_new_nonce_is_fresh_and_in_profile() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(16 <= len(n) <= 128 for n in nonces)


# --- nonce cache ---------------------------------------------------------------------------


def test_nonce_cache_detects_replay_until_the_window_ends() -> None:
    cache = NonceCache(window_seconds=60, max_entries=10)
    cache.remember("k", "n1", created=100, now=100)
    with pytest.raises(RequestSignatureError, match="replayed"):
        cache.remember("k", "n1", created=100, now=160)
    cache.purge(161)
    assert ("k", "n1") not in cache
    cache.remember("k", "n1", created=161, now=161)
    assert len(cache) == 1


def test_nonce_cache_is_bounded_and_fails_closed() -> None:
    cache = NonceCache(window_seconds=60, max_entries=3, max_per_signer=3)
    for i in range(3):
        cache.remember("k", f"n{i}", created=100 + i, now=100 + i)
    with pytest.raises(NonceCacheFull, match="full"):
        cache.remember("k", "n3", created=103, now=103)
    assert len(cache) == 3
    # Earlier entries are still remembered: nothing live was evicted to make room.
    with pytest.raises(RequestSignatureError, match="replayed"):
        cache.remember("k", "n0", created=100, now=103)
    # As entries expire, room frees up, oldest first.
    cache.remember("k", "n3", created=161, now=161)
    assert ("k", "n0") not in cache and ("k", "n1") in cache
    assert len(cache) == 3


def test_nonce_cache_never_grows_past_its_bound() -> None:
    cache = NonceCache(window_seconds=5, max_entries=50, max_per_signer=20)
    full = 0
    for t in range(1000):
        for j in range(20):
            try:
                cache.remember(f"k{j % 3}", f"{t}-{j}", created=t, now=t)
            except NonceCacheFull:
                full += 1
        assert len(cache) <= 50
        assert all(cache.count(f"k{i}") <= 20 for i in range(3))
    assert full > 0


def test_nonce_cache_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        NonceCache(window_seconds=0)
    with pytest.raises(ValueError):
        NonceCache(max_entries=0)
    with pytest.raises(ValueError):
        NonceCache(max_per_signer=0)
    with pytest.raises(ValueError):
        RequestVerifier(lambda k: None, window_seconds=120,
                        nonce_cache=NonceCache(window_seconds=60))


async def test_verifier_uses_the_shared_cache(signer: Signer) -> None:
    cache = NonceCache(window_seconds=60, max_entries=1)
    verifier = RequestVerifier({signer.node_id: signer.public}.get, nonce_cache=cache)
    assert verifier.verify(await signed(signer), NOW) == signer.node_id
    with pytest.raises(NonceCacheFull):
        verifier.verify(await signed(signer), NOW)


def test_one_signer_cannot_lock_the_others_out() -> None:
    cache = NonceCache(window_seconds=60, max_entries=1000, max_per_signer=10)
    for i in range(10):
        cache.remember("flooder", f"n{i}", created=100, now=100)
    with pytest.raises(NonceCacheFull, match="quota"):
        cache.remember("flooder", "one-more", created=100, now=100)
    for i in range(10):  # every other signer still gets its own room
        cache.remember(f"honest{i}", "n0", created=100, now=100)
    assert cache.count("flooder") == 10 and len(cache) == 20
    cache.purge(161)  # the flooder's quota frees up as its entries expire
    assert cache.count("flooder") == 0
    cache.remember("flooder", "again", created=161, now=161)


def test_the_default_quota_is_a_small_share_of_the_cache() -> None:
    cache = NonceCache()
    assert cache.max_per_signer == cache.max_entries // 100
    for i in range(cache.max_per_signer):
        cache.remember("flooder", f"n{i}", created=100, now=100)
    with pytest.raises(NonceCacheFull):
        cache.remember("flooder", "x", created=100, now=100)
    cache.remember("honest", "n", created=100, now=100)


async def test_a_full_cache_is_busy_not_a_bad_signature(signer: Signer) -> None:
    cache = NonceCache(window_seconds=60, max_entries=1)
    verifier = RequestVerifier({signer.node_id: signer.public}.get, nonce_cache=cache)
    verifier.verify(await signed(signer), NOW)
    try:
        verifier.verify(await signed(signer), NOW)
    except Exception as exc:  # what a service's error handler sees
        assert isinstance(exc, ServiceBusy) and not isinstance(exc, RequestSignatureError)
    else:
        raise AssertionError("a full cache must refuse")


def test_saved_nonces_are_known_again_after_a_restart() -> None:
    """What a stopped verifier saves (``live``) a new one restores: replays stay refused."""
    old = NonceCache(window_seconds=60, max_entries=10, max_per_signer=10)
    old.remember("k", "n1", created=100, now=100)
    old.remember("k", "n2", created=30, now=80)  # expires at 90
    saved = old.live(95)
    assert saved == [("k", "n1", 160)]
    new = NonceCache(window_seconds=60, max_entries=10, max_per_signer=10)
    assert new.restore([*saved, ("j", "gone", 94)], now=95) == 1
    with pytest.raises(RequestSignatureError, match="replayed"):
        new.remember("k", "n1", created=100, now=120)
    assert new.count("k") == 1 and ("j", "gone") not in new
    new.purge(161)
    assert len(new) == 0 and new.count("k") == 0


async def test_signatures_made_before_not_before_are_refused(signer: Signer) -> None:
    """A verifier whose cache cannot know older nonces refuses older signatures, both paths."""
    verifier = RequestVerifier({signer.node_id: signer.public}.get, not_before=NOW)
    reject(verifier, await signed(signer, now=NOW - 1), "before this service started")
    assert verifier.verify(await signed(signer, now=NOW), NOW) == signer.node_id
