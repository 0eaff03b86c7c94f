"""C2SP checkpoints and signed notes: Go's known answers, real notes, and every malformation."""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openred.crypto.identity import NodeId, Signature, SignKey
from openred.errors import CheckpointError
from openred.store.checkpoint import (
    Checkpoint,
    NoteSignature,
    SignedNote,
    format_signed_note,
    key_id,
    node_origin,
    parse_checkpoint_body,
    parse_signed_note,
    parse_vkey,
    sign_checkpoint,
    verify_checkpoint,
    verify_note,
    vkey,
)
from openred.store.merkle import root_from_entry_hashes
from openred.store.signer import InProcessSigner

EM = "\u2014"

# --- golang.org/x/mod/sumdb/note note_test.go (TestNewVerifier, TestSign, TestOpen) ----------
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (b"If you think cryptography is the answer to your problem,\n"
        b"then you don't know what your problem is.\n")
PETER_SIG = (f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgK"
             "vqfqdngotpRZb6KE6RyyBwJnAM=\n").encode()
ENOCH_SIG = (f"{EM} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG"
             "01oOTGwnWLox33WWd1RvMc+QQ=\n").encode()

# --- a real checkpoint from https://sum.golang.org/latest (2024-09-23, as quoted in a public Go
# test, TestGoSumDBCheckpoint); the key is the one compiled into cmd/go. Its signature verifying
# below is what makes it trustworthy here.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n30055305\nmXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n\n"
    f"{EM} sum.golang.org Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevucFcAAl"
    "WFJJYle3EJlDCrQ+y3A8=\n"
).encode()

# --- the example in https://c2sp.org/tlog-checkpoint (its key is not published) ---------------
C2SP_NOTE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    f"{EM} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Z"
    "hcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
).encode()

SEED = bytes(range(32))


def peter_signer() -> InProcessSigner:
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 0x01 and len(raw) == 33
    return InProcessSigner.from_seed(raw[1:])


def node_signer(seed: bytes = SEED) -> tuple[InProcessSigner, str]:
    signer = InProcessSigner.from_seed(seed)
    return signer, node_origin(signer.sign_key.node_id)


def sample_checkpoint(origin: str, size: int = 5) -> Checkpoint:
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(size)]
    return Checkpoint(origin, size, root_from_entry_hashes(leaves))


def other_key(seed: bytes = b"\x07" * 32) -> SignKey:
    return SignKey(bytes(nacl.signing.SigningKey(seed).verify_key))


# --- known answers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "name", "id_hex"), [
    (PETER_VKEY, "PeterNeumann", "c74f20a3"),
    (ENOCH_VKEY, "EnochRoot", "af0cfe78"),
    (SUMDB_VKEY, "sum.golang.org", "033de0ae"),
])
def test_vkeys_parse_and_reencode_exactly(text: str, name: str, id_hex: str) -> None:
    parsed_name, key = parse_vkey(text)
    assert parsed_name == name
    assert key_id(name, key).hex() == id_hex
    assert vkey(name, key) == text


def test_go_private_key_seed_reproduces_the_go_signature_and_note() -> None:
    signer = peter_signer()
    name, key = parse_vkey(PETER_VKEY)
    assert signer.sign_key == key
    signature = signer._key.sign(TEXT).signature  # Ed25519 is deterministic (RFC 8032)
    assert format_signed_note(TEXT, [(name, key, signature)]) == TEXT + b"\n" + PETER_SIG


async def test_in_process_signer_signs_the_go_note_identically() -> None:
    signer = peter_signer()
    signature = await signer.sign_checkpoint(TEXT)
    assert format_signed_note(TEXT, [("PeterNeumann", signer.sign_key, signature)]) == (
        TEXT + b"\n" + PETER_SIG)


def test_parse_go_note_with_two_signatures() -> None:
    note = TEXT + b"\n" + PETER_SIG + ENOCH_SIG
    parsed = parse_signed_note(note)
    assert parsed.body == TEXT
    assert [(s.key_name, s.key_id.hex(), len(s.signature)) for s in parsed.signatures] == [
        ("PeterNeumann", "c74f20a3", 64), ("EnochRoot", "af0cfe78", 64)]
    assert parsed.encode() == note


def test_go_note_verifies_under_each_of_its_keys_and_ignores_the_other() -> None:
    note = TEXT + b"\n" + PETER_SIG + ENOCH_SIG
    for text in (PETER_VKEY, ENOCH_VKEY):
        name, key = parse_vkey(text)
        assert verify_note(note, name, key).body == TEXT


def test_go_note_signed_only_by_an_unknown_key_is_rejected() -> None:
    name, key = parse_vkey(PETER_VKEY)
    with pytest.raises(CheckpointError,
                       match=r"^note has no signature by key PeterNeumann\+c74f20a3$"):
        verify_note(TEXT + b"\n" + ENOCH_SIG, name, key)


def test_go_note_with_a_mangled_signature_is_rejected() -> None:
    # TestOpen "Invalid signature": four base64 characters inserted into the signature.
    name, key = parse_vkey(PETER_VKEY)
    mangled = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError,
                       match=r"^invalid signature for key PeterNeumann\+c74f20a3$"):
        verify_note(TEXT + b"\n" + mangled, name, key)


def test_go_note_is_not_a_checkpoint() -> None:
    name, key = parse_vkey(PETER_VKEY)
    with pytest.raises(CheckpointError, match="malformed checkpoint"):
        verify_checkpoint(TEXT + b"\n" + PETER_SIG, name, key, origin="anything")


def test_real_sum_golang_org_checkpoint_verifies() -> None:
    name, key = parse_vkey(SUMDB_VKEY)
    checkpoint = verify_checkpoint(SUMDB_NOTE, name, key, origin="go.sum database tree")
    assert checkpoint.origin == "go.sum database tree"
    assert checkpoint.size == 30055305
    assert base64.b64encode(checkpoint.root_hash) == b"mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM="
    assert checkpoint.extensions == ()
    assert SUMDB_NOTE.startswith(checkpoint.body() + b"\n")


def test_real_checkpoint_origin_must_match_what_the_caller_expects() -> None:
    name, key = parse_vkey(SUMDB_VKEY)
    # By default the origin must equal the key name (OpenRed's convention); the sumdb's does not.
    with pytest.raises(CheckpointError,
                       match=r"^checkpoint origin 'go.sum database tree' is not 'sum.golang.org'$"):
        verify_checkpoint(SUMDB_NOTE, name, key)


def test_c2sp_spec_example_parses_but_an_unknown_key_cannot_vouch_for_it() -> None:
    parsed = parse_signed_note(C2SP_NOTE)
    checkpoint = parse_checkpoint_body(parsed.body)
    assert (checkpoint.origin, checkpoint.size) == ("example.com/behind-the-sofa", 20852163)
    assert checkpoint.body() == parsed.body
    assert parsed.signatures[0].key_name == "example.com/behind-the-sofa"
    with pytest.raises(CheckpointError, match="no signature by key"):
        verify_checkpoint(C2SP_NOTE, "example.com/behind-the-sofa", other_key())


# --- OpenRed checkpoints ------------------------------------------------------------------------

def test_node_origin_is_openred_slash_node_id() -> None:
    signer, origin = node_signer()
    assert origin == f"openred/{signer.sign_key.node_id}"
    with pytest.raises(ValueError, match="not a node id"):
        node_origin(NodeId("NOT-AN-ID"))
    with pytest.raises(ValueError, match="not a node id"):
        node_origin("openred/" + signer.sign_key.node_id)  # type: ignore[arg-type]


async def test_sign_and_verify_round_trip() -> None:
    signer, origin = node_signer()
    checkpoint = sample_checkpoint(origin, 7)
    note = await sign_checkpoint(checkpoint, origin, signer)
    assert verify_checkpoint(note, origin, signer.sign_key) == checkpoint
    body, _, sig_block = note.partition(b"\n\n")
    assert body + b"\n" == checkpoint.body()
    assert sig_block.startswith(f"{EM} {origin} ".encode()) and sig_block.endswith(b"\n")
    # Deterministic: the same checkpoint under the same key gives the same note.
    assert await sign_checkpoint(checkpoint, origin, signer) == note


async def test_checkpoint_note_verifies_with_an_independent_minimal_verifier() -> None:
    """What any signed-note verifier does, written from the spec text with PyNaCl alone."""
    signer, origin = node_signer()
    note = await sign_checkpoint(sample_checkpoint(origin, 3), origin, signer)
    text = note.decode()
    split = text.rindex("\n\n")
    body, line = text[: split + 1].encode(), text[split + 2:]
    assert line.endswith("\n") and line.count("\n") == 1
    name, encoded = line[2:-1].split(" ")
    raw = base64.b64decode(encoded, validate=True)
    expected_id = hashlib.sha256(name.encode() + b"\n\x01" + signer.sign_key.raw).digest()[:4]
    assert line.startswith(f"{EM} ") and name == origin and raw[:4] == expected_id
    nacl.signing.VerifyKey(signer.sign_key.raw).verify(body, raw[4:])
    encoded_key = base64.b64encode(b"\x01" + signer.sign_key.raw).decode()
    assert vkey(origin, signer.sign_key) == f"{origin}+{expected_id.hex()}+{encoded_key}"


async def test_empty_log_checkpoint() -> None:
    signer, origin = node_signer()
    empty = Checkpoint(origin, 0, hashlib.sha256(b"").digest())
    assert empty.body().split(b"\n")[1] == b"0"
    note = await sign_checkpoint(empty, origin, signer)
    assert verify_checkpoint(note, origin, signer.sign_key) == empty


async def test_extensions_round_trip() -> None:
    signer, origin = node_signer()
    checkpoint = Checkpoint(origin, 1, b"\x01" * 32, ("ext one", "— two"))
    note = await sign_checkpoint(checkpoint, origin, signer)
    assert verify_checkpoint(note, origin, signer.sign_key) == checkpoint


# --- signature negatives ------------------------------------------------------------------------

async def test_tampered_body_is_rejected() -> None:
    signer, origin = node_signer()
    note = await sign_checkpoint(sample_checkpoint(origin, 5), origin, signer)
    forged = note.replace(b"\n5\n", b"\n6\n", 1)
    assert forged != note
    with pytest.raises(CheckpointError, match=r"^invalid signature for key openred/"):
        verify_checkpoint(forged, origin, signer.sign_key)


async def test_wrong_key_and_wrong_key_name_are_rejected() -> None:
    signer, origin = node_signer()
    note = await sign_checkpoint(sample_checkpoint(origin), origin, signer)
    with pytest.raises(CheckpointError, match="no signature by key"):
        verify_checkpoint(note, origin, other_key())
    with pytest.raises(CheckpointError, match="no signature by key"):
        verify_checkpoint(note, origin + "x", signer.sign_key, origin=origin)


async def test_right_name_and_key_id_but_another_keys_signature_is_rejected() -> None:
    # A key-id collision gets an attacker nothing: the signature is checked with the pinned key.
    signer, origin = node_signer()
    checkpoint = sample_checkpoint(origin)
    intruder = InProcessSigner.from_seed(b"\x09" * 32)
    bad_sig = await intruder.sign_checkpoint(checkpoint.body())
    note = SignedNote(checkpoint.body(), (
        NoteSignature(origin, key_id(origin, signer.sign_key), bad_sig),)).encode()
    with pytest.raises(CheckpointError, match="invalid signature for key"):
        verify_checkpoint(note, origin, signer.sign_key)


async def test_a_bad_duplicate_signature_by_the_trusted_key_rejects_the_note() -> None:
    signer, origin = node_signer()
    note = await sign_checkpoint(sample_checkpoint(origin), origin, signer)
    parsed = parse_signed_note(note)
    good = parsed.signatures[0]
    bad = NoteSignature(good.key_name, good.key_id, bytes(64))
    for order in ((good, bad), (bad, good)):
        with pytest.raises(CheckpointError, match="invalid signature"):
            verify_checkpoint(SignedNote(parsed.body, order).encode(), origin, signer.sign_key)
    short = NoteSignature(good.key_name, good.key_id, good.signature[:63])
    with pytest.raises(CheckpointError, match="invalid signature"):
        verify_checkpoint(SignedNote(parsed.body, (short,)).encode(), origin, signer.sign_key)


async def test_unknown_signatures_beside_a_valid_one_are_ignored() -> None:
    signer, origin = node_signer()
    note = await sign_checkpoint(sample_checkpoint(origin), origin, signer)
    stranger = NoteSignature("witness.example", b"\x00\x01\x02\x03", b"\xff" * 10)
    # Same name, other id: an unknown key too (signed-note "Signatures").
    same_name = NoteSignature(origin, b"\xde\xad\xbe\xef", bytes(64))
    noisy = note + stranger.line().encode() + same_name.line().encode()
    assert verify_checkpoint(noisy, origin, signer.sign_key) == sample_checkpoint(origin)


async def test_every_single_byte_change_to_a_signed_checkpoint_is_rejected() -> None:
    signer, origin = node_signer()
    note = await sign_checkpoint(sample_checkpoint(origin, 9), origin, signer)
    for i in range(len(note)):
        mutated = bytearray(note)
        mutated[i] ^= 0x01
        with pytest.raises(CheckpointError):
            verify_checkpoint(bytes(mutated), origin, signer.sign_key)


@settings(max_examples=100, deadline=None)
@given(st.data())
async def test_property_no_truncation_or_insertion_verifies(data: st.DataObject) -> None:
    signer, origin = node_signer()
    note = await sign_checkpoint(sample_checkpoint(origin, 4), origin, signer)
    cut = data.draw(st.integers(min_value=0, max_value=len(note) - 1))
    insert = data.draw(st.binary(min_size=1, max_size=4))
    # Four bytes cannot form a whole extra signature line, so nothing here may verify.
    for candidate in (note[:cut], note[:cut] + insert + note[cut:]):
        with pytest.raises(CheckpointError):
            verify_checkpoint(candidate, origin, signer.sign_key)


class _FaultySigner:
    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._inner = InProcessSigner.from_seed(SEED)

    @property
    def sign_key(self) -> SignKey:
        return self._inner.sign_key

    async def sign_entry_hashes(self, hashes: object) -> list[Signature]:
        raise NotImplementedError

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return Signature(self._answer)


async def test_sign_checkpoint_refuses_a_signer_that_returns_a_bad_signature() -> None:
    _, origin = node_signer()
    checkpoint = sample_checkpoint(origin)
    with pytest.raises(CheckpointError, match="invalid signature"):
        await sign_checkpoint(checkpoint, origin, _FaultySigner(bytes(64)))
    with pytest.raises(CheckpointError, match="64 bytes"):
        await sign_checkpoint(checkpoint, origin, _FaultySigner(b"\x01" * 10))


# --- malformed notes: every rule of c2sp.org/signed-note "Format" ------------------------------

_B64_SIG = PETER_SIG.decode().split(" ")[2]
BAD_NOTES = {
    # TestOpen's "Invalid encoded message syntax" list:
    "no blank line": TEXT,
    "no signature lines": TEXT + b"\n",
    "no final newline": TEXT + b"\n" + PETER_SIG[:-1],
    "control character": b"\x01" + TEXT + b"\n" + PETER_SIG,
    "invalid UTF-8": b"\xff" + TEXT + b"\n" + PETER_SIG,
    "space in key name": TEXT + b"\n" + f"{EM} Bad Name {_B64_SIG}".encode(),
    "unexpected line": TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n",
    # and the rest of the rules:
    "carriage return": TEXT.replace(b"\n", b"\r\n") + b"\n" + PETER_SIG,
    "tab": b"\t" + TEXT + b"\n" + PETER_SIG,
    "NUL": TEXT + b"\n" + PETER_SIG[:-1] + b"\x00\n",
    "surrogate in UTF-8": b"\xed\xa0\x80" + TEXT + b"\n" + PETER_SIG,
    "hyphen instead of em dash": TEXT + b"\n-" + PETER_SIG[3:],
    "en dash instead of em dash": TEXT + b"\n" + "\u2013".encode() + PETER_SIG[3:],
    "no space after dash": TEXT + b"\n" + PETER_SIG.replace(b" ", b"", 1),
    "empty key name": TEXT + b"\n" + f"{EM}  {_B64_SIG}".encode(),
    "plus in key name": TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann", b"Peter+Neumann"),
    "no-break space in key name":
        TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann", "Peter\u00a0Neumann".encode()),
    "no signature after name": TEXT + b"\n" + f"{EM} PeterNeumann\n".encode(),
    "empty signature": TEXT + b"\n" + f"{EM} PeterNeumann \n".encode(),
    "bad base64": TEXT + b"\n" + PETER_SIG.replace(b"x08go", b"x08g!"),
    "missing padding": TEXT + b"\n" + PETER_SIG.replace(b"AM=\n", b"AM\n"),
    "non-canonical base64": TEXT + b"\n" + PETER_SIG.replace(b"AM=\n", b"AN=\n"),
    "trailing space": TEXT + b"\n" + PETER_SIG[:-1] + b" \n",
    "signature shorter than key id + 1":
        TEXT + b"\n" + f"{EM} PeterNeumann {base64.b64encode(b'1234').decode()}\n".encode(),
    "101 signatures": TEXT + b"\n" + PETER_SIG * 101,
}


@pytest.mark.parametrize("note", BAD_NOTES.values(), ids=BAD_NOTES.keys())
def test_malformed_notes_are_rejected(note: bytes) -> None:
    with pytest.raises(CheckpointError, match=r"malformed note|note is not|note contains"):
        parse_signed_note(note)
    name, key = parse_vkey(PETER_VKEY)
    with pytest.raises(CheckpointError):
        verify_note(note, name, key)


def test_note_error_messages_are_exact() -> None:
    with pytest.raises(CheckpointError, match=r"^malformed note: more than 100 signatures$"):
        parse_signed_note(BAD_NOTES["101 signatures"])
    with pytest.raises(CheckpointError, match=r"^note is not valid UTF-8$"):
        parse_signed_note(BAD_NOTES["invalid UTF-8"])
    with pytest.raises(CheckpointError,
                       match=r"^malformed note: signature line 2 does not start with an em dash$"):
        parse_signed_note(BAD_NOTES["unexpected line"])


def test_one_hundred_signatures_are_accepted() -> None:
    # The spec's floor is 16; ours is Go's 100.
    parsed = parse_signed_note(TEXT + b"\n" + PETER_SIG * 100)
    assert len(parsed.signatures) == 100
    name, key = parse_vkey(PETER_VKEY)
    assert verify_note(TEXT + b"\n" + PETER_SIG * 100, name, key).body == TEXT


def test_note_text_may_contain_blank_lines() -> None:
    # signed-note: the text is separated from the signatures by the *last* blank line.
    parsed = parse_signed_note(b"a\n\nb\n\n" + PETER_SIG)
    assert parsed.body == b"a\n\nb\n"


def test_format_signed_note_refuses_bad_input() -> None:
    name, key = parse_vkey(PETER_VKEY)
    sig = bytes(64)
    with pytest.raises(CheckpointError, match="does not end with a newline"):
        format_signed_note(b"abc", [(name, key, sig)])
    with pytest.raises(CheckpointError, match="control character"):
        format_signed_note(b"a\rb\n", [(name, key, sig)])
    with pytest.raises(CheckpointError, match="expected 1 to 100 signatures, got 0"):
        format_signed_note(TEXT, [])
    with pytest.raises(CheckpointError, match="expected 1 to 100 signatures, got 101"):
        format_signed_note(TEXT, [(name, key, sig)] * 101)
    with pytest.raises(CheckpointError, match="64 bytes"):
        format_signed_note(TEXT, [(name, key, sig[:63])])
    for bad_name in ("", "a b", "a+b", "a\u2003b", "a\nb"):
        with pytest.raises(CheckpointError, match="invalid key name"):
            format_signed_note(TEXT, [(bad_name, key, sig)])


# --- malformed checkpoint bodies ----------------------------------------------------------------

ROOT_B64 = base64.b64encode(bytes(range(32))).decode()
BAD_BODIES = {
    "no final newline": f"o\n1\n{ROOT_B64}",
    "two lines": f"o\n{ROOT_B64}\n",
    "empty origin": f"\n1\n{ROOT_B64}\n",
    "leading zero": f"o\n01\n{ROOT_B64}\n",
    "double zero": f"o\n00\n{ROOT_B64}\n",
    "negative size": f"o\n-1\n{ROOT_B64}\n",
    "plus sign": f"o\n+1\n{ROOT_B64}\n",
    "space before size": f"o\n 1\n{ROOT_B64}\n",
    "fractional size": f"o\n1.0\n{ROOT_B64}\n",
    "hex size": f"o\n0x10\n{ROOT_B64}\n",
    "underscore size": f"o\n1_000\n{ROOT_B64}\n",
    "non-ASCII digit": f"o\n\uff11\n{ROOT_B64}\n",
    "empty size": f"o\n\n{ROOT_B64}\n",
    "size 2**64": f"o\n18446744073709551616\n{ROOT_B64}\n",
    "31-byte root": f"o\n1\n{base64.b64encode(bytes(31)).decode()}\n",
    "33-byte root": f"o\n1\n{base64.b64encode(bytes(33)).decode()}\n",
    "unpadded root": f"o\n1\n{ROOT_B64.rstrip('=')}\n",
    "url-safe root": f"o\n1\n{base64.urlsafe_b64encode(bytes([251] * 32)).decode()}\n",
    "hex root": f"o\n1\n{bytes(32).hex()}\n",
    "non-canonical root": f"o\n1\n{ROOT_B64[:-2]}F=\n",
    "empty root": "o\n1\n\n",
    "empty extension line": f"o\n1\n{ROOT_B64}\n\n",
    "empty extension between": f"o\n1\n{ROOT_B64}\next\n\nmore\n",
    "CRLF": f"o\r\n1\r\n{ROOT_B64}\r\n",
    "control char in origin": f"o\x7f\x01\n1\n{ROOT_B64}\n",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_checkpoint_bodies_are_rejected(body: str) -> None:
    with pytest.raises(CheckpointError, match="checkpoint"):
        parse_checkpoint_body(body.encode())


def test_checkpoint_body_error_messages_are_exact() -> None:
    with pytest.raises(CheckpointError, match=r"^malformed checkpoint: tree size '01' is not a "
                                              r"decimal number without leading zeros$"):
        parse_checkpoint_body(BAD_BODIES["leading zero"].encode())
    with pytest.raises(CheckpointError,
                       match=r"^malformed checkpoint: root hash must be 32 bytes, got 31$"):
        parse_checkpoint_body(BAD_BODIES["31-byte root"].encode())


def test_checkpoint_body_edge_values_parse() -> None:
    largest = f"o\n18446744073709551615\n{ROOT_B64}\n".encode()
    assert parse_checkpoint_body(largest).size == 2**64 - 1
    spaced = f"origin with spaces+plus\n0\n{ROOT_B64}\nx\n".encode()
    parsed = parse_checkpoint_body(spaced)
    assert (parsed.origin, parsed.size, parsed.extensions) == ("origin with spaces+plus", 0, ("x",))
    assert parsed.body() == spaced


@pytest.mark.parametrize(("args", "message"), [
    (("", 1, bytes(32)), "origin is empty"),
    (("a\nb", 1, bytes(32)), "control character"),
    (("o", -1, bytes(32)), "out of range"),
    (("o", 2**64, bytes(32)), "out of range"),
    (("o", True, bytes(32)), "not an integer"),
    (("o", 1, bytes(31)), "must be 32 bytes, got 31"),
    (("o", 1, "x" * 32), "must be 32 bytes"),
    (("o", 1, bytes(32), ("",)), "extension line 1 is empty"),
    (("o", 1, bytes(32), ("a", "b\nc")), "extension line 2 contains a control character"),
    (("o", 1, bytes(32), ["list"]), "tuple"),
])
def test_checkpoint_constructor_validates(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(*args)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    origin=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40),
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1,
                                max_size=10), max_size=3),
)
def test_property_checkpoint_body_round_trips(
    origin: str, size: int, root: bytes, extensions: list[str]
) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint_body(checkpoint.body()) == checkpoint


# --- vkeys --------------------------------------------------------------------------------------

def test_every_mangled_go_vkey_is_rejected() -> None:
    # TestNewVerifier: every proper substring, and every single character bumped by one.
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if i != 0 or j != len(PETER_VKEY):
                with pytest.raises(CheckpointError):
                    parse_vkey(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        bumped = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1:]
        with pytest.raises(CheckpointError):
            parse_vkey(bumped)


@pytest.mark.parametrize(("text", "message"), [
    # Go's two crafted keys, each with a key hash adjusted to match.
    ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
     "key is not canonical base64"),  # Go decodes it leniently and then refuses 38 bytes
    ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
     "unknown signature type 0x65"),
    ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
    ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex digits"),
    ("PeterNeumann+c74f20a3", "expected <name>"),
    ("PeterNeumann+8a03836b+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWAAAA",
     "an Ed25519 key is 32 bytes, got 35"),
    ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "invalid key name"),
    ("PeterNeumann+c74f20a3+", "key is empty"),
])
def test_bad_vkeys(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_vkey(text)


def test_uppercase_key_id_is_accepted_like_go() -> None:
    name, key = parse_vkey(PETER_VKEY.replace("c74f20a3", "C74F20A3"))
    assert vkey(name, key) == PETER_VKEY


def test_key_id_depends_on_name_and_key() -> None:
    key = parse_vkey(PETER_VKEY)[1]
    assert key_id("PeterNeumann", key) != key_id("PeterNeumanN", key)
    assert key_id("PeterNeumann", key) != key_id("PeterNeumann", other_key())
    for bad_name in ("", "a b", "a+b", "a\u3000b", "a\tb"):
        with pytest.raises(CheckpointError, match="invalid key name"):
            key_id(bad_name, key)
