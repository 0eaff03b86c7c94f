"""The operator's second factor (issue 10, authentication §2-3): TOTP enrolment, codes accepted
once, failures rate-limited and logged, and short-lived admin tokens for the CLI.

State lives in ``DATA_DIR/operator-totp.json`` (0600): the TOTP secret *wrapped by the jail*
(label ``operator-totp``, so the file alone reveals nothing), whether enrolment was confirmed
with a first code, and the last time step accepted (a code — even within its window — is
accepted once, across restarts too). Admin tokens are random, kept only as SHA-256 hashes in
memory (a restart signs every CLI out) and expire after ``token_ttl`` seconds.

Wrong codes are limited (``max_failures`` per ``failure_window``) in two separate counts: for
connections opened on this machine by the node's user, the admin key's owner or root (the
operator at the node: ``local``), and for every other (``elsewhere``). The admin API listens
on loopback only, so a client's address says nothing; the kernel's socket table says whose a
connection is (:func:`openred.procnet.connection_owner`). Someone holding a stolen bearer key
as another user can keep ``elsewhere`` locked, never the operator at the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url, from_b64url
from openred.errors import ConfigurationError, RequestRefused
from openred.files import write_private
from openred.modules.authentication.files import TOTP_STATE_FILE
from openred.modules.authentication.totp import SECRET_BYTES, match_step, provisioning_uri
from openred.node.admin_keys import ADMIN_KEY_FILE
from openred.procnet import connection_owner
from openred.ratelimit import RateLimiter

__all__ = ["WRAP_LABEL", "OperatorAuth"]

logger = logging.getLogger("openred.authentication.operator")

WRAP_LABEL = "operator-totp"
LOCAL: Final = "local"
"""Failures of connections the node's user, the admin key's owner or root opened here."""
ELSEWHERE: Final = "elsewhere"
"""Failures of every other connection (another user, another host, one the tables miss)."""

Endpoints = tuple[Any, Any]
"""A connection as the admin server saw it: (client, server), each ``(host, port)``."""


def _write_private(path: Path, obj: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``obj`` as JSON, mode 0600 from the start."""
    write_private(path, json.dumps(obj))


class OperatorAuth:
    """TOTP second factor and admin tokens for one node's operator."""

    def __init__(
        self, data_dir: Path, jail: JailClient, *, account: str, token_ttl: int = 900,
        max_failures: int = 5, failure_window: float = 300.0,
        clock: Callable[[], float] = time.time,
        random: Callable[[int], bytes] = secrets.token_bytes,
        owner_of: Callable[[Any, Any], int | None] = connection_owner,
    ) -> None:
        if not 30 <= token_ttl <= 86400:
            raise ConfigurationError("the admin token lifetime is 30..86400 seconds")
        self.path = data_dir / TOTP_STATE_FILE
        self.jail = jail
        self.account = account
        self.token_ttl = token_ttl
        self.clock = clock
        self.random = random
        self.failures = RateLimiter(max_failures, failure_window)
        self.owner_of = owner_of
        self._tokens: dict[bytes, int] = {}
        self._lock = asyncio.Lock()

    def now(self) -> int:
        return int(self.clock())

    # -- state --

    def _state(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            raw = ""  # damaged: refused below, like any other damage
        try:
            state = json.loads(raw)
        except (ValueError, RecursionError):
            state = None
        if not isinstance(state, dict) or not isinstance(state.get("wrapped_secret"), str):
            # Never treat a damaged file as "not enrolled": that would drop the second factor.
            raise RequestRefused(503, "second-factor-unreadable",
                                 f"{self.path} is damaged; restore it or remove it by hand")
        return state

    def status(self) -> dict[str, bool]:
        state = self._state()
        return {"enrolled": bool(state and state.get("confirmed")),
                "pending": bool(state and not state.get("confirmed"))}

    @property
    def enrolled(self) -> bool:
        return self.status()["enrolled"]

    # -- enrolment --

    async def enroll(self) -> str:
        """Start (or restart) enrolment: a new wrapped secret; its otpauth URI."""
        async with self._lock:
            state = self._state()
            if state is not None and state.get("confirmed"):
                raise RequestRefused(409, "already-enrolled",
                                     "a second factor is enrolled: disable it first")
            secret = self.random(SECRET_BYTES)
            wrapped = await self.jail.wrap(WRAP_LABEL, secret)
            _write_private(self.path, {"v": 1, "wrapped_secret": b64url(wrapped),
                                       "confirmed": False, "last_step": None,
                                       "created_at": self.now()})
        logger.info("operator second factor enrolment started",
                    extra={"event": "OperatorSecondFactorEnrolling"})
        return provisioning_uri(secret, self.account)

    async def confirm(self, code: str, *, connection: Endpoints | None = None) -> None:
        """Finish enrolment with a first valid code; from now on sensitive actions need it."""
        state = self._state()
        if state is None or state.get("confirmed"):
            raise RequestRefused(409, "not-enrolling", "no enrolment is waiting for a code")
        await self.verify(code, confirming=True, connection=connection)
        logger.info("operator second factor enrolled",
                    extra={"event": "OperatorSecondFactorEnrolled"})

    async def disable(self, code: str, *, connection: Endpoints | None = None) -> None:
        """Remove the second factor; needs a valid code (not a token)."""
        if not self.enrolled:
            raise RequestRefused(409, "not-enrolled", "no second factor is enrolled")
        await self.verify(code, connection=connection)
        self.path.unlink(missing_ok=True)
        self._tokens.clear()
        logger.warning("operator second factor disabled",
                       extra={"event": "OperatorSecondFactorDisabled"})

    # -- codes and tokens --

    def _caller(self, connection: Endpoints | None) -> tuple[str, int | None]:
        """Whose failures an attempt on ``connection`` counts with; the uid if known."""
        if connection is None:
            return ELSEWHERE, None
        uid = self.owner_of(*connection)
        if uid is None:
            return ELSEWHERE, None
        local = {os.geteuid(), 0}
        with contextlib.suppress(OSError):
            local.add((self.path.parent / ADMIN_KEY_FILE).stat().st_uid)
        return (LOCAL if uid in local else ELSEWHERE), uid

    async def verify(self, code: str, *, confirming: bool = False,
                     connection: Endpoints | None = None) -> None:
        """Accept ``code`` once, or raise 401 (wrong or reused) / 429 (too many failures).

        ``connection`` is the request's (client, server): failures are counted for the
        operator at the node apart from everyone else (see the module's docstring).
        """
        # One read of /proc/net/tcp{,6} per code tried (never for a token or the bearer key).
        caller, uid = await asyncio.to_thread(self._caller, connection)
        who = {"caller": caller, "uid": uid}
        async with self._lock:
            # The failure check runs under the lock, after the attempts before this one were
            # counted: checked outside it, a burst of codes sent at once all saw "no failure
            # yet" and were all tried (N guesses per window instead of max_failures).
            now = self.now()
            wait = self.failures.retry_after(caller, now)
            if wait is not None:
                logger.warning("second factor attempt refused: too many failures",
                               extra={"event": "OperatorSecondFactorRateLimited", **who})
                raise RequestRefused(429, "rate-limited", "too many wrong codes: wait",
                                     retry_after=max(1, int(wait + 0.999)))
            state = self._state()
            # Confirming needs an enrolment waiting for its first code; otherwise a finished one.
            if state is None or bool(state.get("confirmed")) is confirming:
                raise RequestRefused(409, "not-enrolled", "no second factor is enrolled")
            secret = await self.jail.unwrap(WRAP_LABEL, from_b64url(state["wrapped_secret"]))
            step = match_step(secret, code, now) if isinstance(code, str) else None
            last = state.get("last_step")
            reused = step is not None and isinstance(last, int) and step <= last
            if step is None or reused:
                self.failures.hit(caller, now)
                reason = "reused-code" if reused else "wrong-code"
                logger.warning("second factor code refused (%s, %s)", reason, caller,
                               extra={"event": "OperatorSecondFactorFailed", "reason": reason,
                                      **who})
                raise RequestRefused(401, "second-factor-failed",
                                     "the code is wrong, expired or already used")
            _write_private(self.path, {**state, "last_step": step,
                                       "confirmed": state.get("confirmed") or confirming})

    async def issue_token(self, code: str, *,
                          connection: Endpoints | None = None) -> tuple[str, int]:
        """A short-lived admin token for a valid code; (token, expires_at)."""
        if not self.enrolled:
            raise RequestRefused(409, "not-enrolled", "no second factor is enrolled")
        await self.verify(code, connection=connection)
        now = self.now()
        self._tokens = {h: exp for h, exp in self._tokens.items() if exp > now}
        token = secrets.token_urlsafe(32)
        expires_at = now + self.token_ttl
        self._tokens[hashlib.sha256(token.encode()).digest()] = expires_at
        logger.info("admin token issued", extra={"event": "AdminTokenIssued",
                                                 "expires_at": expires_at})
        return token, expires_at

    def revoke_token(self, token: str) -> bool:
        """Forget ``token`` at once (``openred auth logout``); whether it was still valid.

        Tokens live only in this process's memory, like their issue (a log line, not a log
        entry): the revocation is a log line too (``AdminTokenRevoked``).
        """
        digest = hashlib.sha256(token.encode()).digest()
        now = self.now()
        found = [h for h, exp in self._tokens.items()
                 if hmac.compare_digest(digest, h) and exp > now]
        for h in found:
            del self._tokens[h]
        if found:
            logger.info("admin token revoked", extra={"event": "AdminTokenRevoked"})
        return bool(found)

    def token_valid(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode()).digest()
        now = self.now()
        return any(hmac.compare_digest(digest, h) and exp > now
                   for h, exp in self._tokens.items())

    async def require(self, *, token: str | None, code: str | None,
                      connection: Endpoints | None = None) -> None:
        """Let a sensitive action through: not enrolled, a valid token, or a valid code."""
        if not self.enrolled:
            return
        if token and self.token_valid(token):
            return
        if code:
            await self.verify(code, connection=connection)
            return
        raise RequestRefused(401, "second-factor-required",
                             "this action needs the second factor: run `openred auth login` "
                             "(or send X-OpenRed-TOTP)")
