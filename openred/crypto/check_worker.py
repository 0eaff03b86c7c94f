"""The signature check worker: ``python -I -m openred.crypto.check_worker`` (see checks.py).

Reads batches on stdin — a big-endian u32 count (1 to ``MAX_BATCH``), then per check a 32-byte
Ed25519 key, a 64-byte signature, a u32 length (at most ``MAX_MESSAGE``) and the message — and
answers each batch with one byte per check, in order: 1 if the signature verifies, else 0.
Exits 0 at end of input (its parent closed its end or died) and 2 on a malformed batch. Its
stdin and stdout are one end of a socket pair (see ``ProcessChecker._spawn``), not pipes.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from openred.crypto.checks import _COUNT, _ITEM, MAX_BATCH, MAX_MESSAGE, check_inline
from openred.crypto.identity import SignKey


def _read(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Answer batches until end of input (0) or a malformed one (2)."""
    while True:
        head = inp.read(_COUNT.size)
        if not head:
            return 0
        if len(head) != _COUNT.size:
            return 2
        (count,) = _COUNT.unpack(head)
        if not 1 <= count <= MAX_BATCH:
            return 2
        answer = bytearray(count)
        for i in range(count):
            item = _read(inp, _ITEM.size)
            if item is None:
                return 2
            key, signature, length = _ITEM.unpack(item)
            if length > MAX_MESSAGE:
                return 2
            message = _read(inp, length)
            if message is None:
                return 2
            answer[i] = check_inline(SignKey(key), signature, message)
        out.write(answer)
        out.flush()


def main() -> None:
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))


if __name__ == "__main__":
    main()
