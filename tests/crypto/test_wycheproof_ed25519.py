"""Every Wycheproof Ed25519 verification case through SignKey.verify (DESIGN §6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from openred.crypto.identity import SignKey
from openred.errors import InvalidSignature


def test_every_wycheproof_ed25519_case(vectors_dir: Path) -> None:
    data = json.loads((vectors_dir / "wycheproof_ed25519_test.json").read_text())
    checked = 0
    failures: list[str] = []
    for group in data["testGroups"]:
        key = SignKey(bytes.fromhex(group["publicKey"]["pk"]))
        verify: Callable[[bytes, bytes], object] = key.verify
        for case in group["tests"]:
            checked += 1
            msg, sig = bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"])
            tc = f"tcId {case['tcId']} ({', '.join(case['flags'])})"
            assert case["result"] in ("valid", "invalid"), tc
            try:
                outcome = verify(sig, msg)
            except InvalidSignature:
                if case["result"] == "valid":
                    failures.append(f"{tc}: valid signature rejected")
            except Exception as exc:  # any other exception type is itself a failure
                failures.append(f"{tc}: raised {type(exc).__name__}, not InvalidSignature")
            else:
                if outcome is not None:
                    failures.append(f"{tc}: verify returned {outcome!r}, not None")
                if case["result"] == "invalid":
                    failures.append(f"{tc}: invalid signature accepted")
    assert failures == []
    assert checked == data["numberOfTests"] > 0
