"""Password hashing off the event loop, and access tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import anyio
import jwt
from anyio import CapacityLimiter
from cachetools import TLRUCache
from pwdlib import PasswordHash

from blogapi.db import MAX_ID

ALGORITHM = "HS256"

_password_hash = PasswordHash.recommended()


@lru_cache
def _dummy_hash() -> str:
    # Verified against when an email is unknown, so both failures cost one Argon2 verification.
    return _password_hash.hash("a password nobody has; only its cost matters")


@lru_cache
def _hash_limiter(concurrency: int) -> CapacityLimiter:
    # Argon2 holds ~64 MiB per call and blocks a thread for tens of milliseconds: a bounded
    # pool keeps a burst of logins from stalling the loop or exhausting memory.
    return CapacityLimiter(concurrency)


async def hash_password(password: str, *, concurrency: int) -> str:
    return await anyio.to_thread.run_sync(_password_hash.hash, password, limiter=_hash_limiter(concurrency))


async def verify_password(password: str, password_hash: str | None, *, concurrency: int) -> bool:
    """Check a password; with no hash (unknown account) spend the same time and fail."""
    valid = await anyio.to_thread.run_sync(
        _password_hash.verify, password, password_hash or _dummy_hash(), limiter=_hash_limiter(concurrency)
    )
    return valid and password_hash is not None


@dataclass(frozen=True, slots=True)
class TokenSubject:
    user_id: int
    session_id: int
    """The login session the token belongs to (`sid`): revoking it ends the token."""
    authenticated_at: int = field(default=0, compare=False)
    """When the password was last checked: the session's login (epoch seconds).

    Not part of the subject's identity: two tokens of one session name the same subject."""

    def authenticated_since(self, moment: datetime) -> bool:
        return self.authenticated_at >= moment.timestamp()


def create_access_token(subject: TokenSubject, *, secret: str, lifetime: timedelta) -> str:
    """A token for `subject`, valid for `lifetime`, proving a login at `subject.authenticated_at`."""
    now = datetime.now(UTC)
    claims = {
        "sub": str(subject.user_id),
        "sid": subject.session_id,
        "iat": now,
        "exp": now + lifetime,
        # OpenID Connect's name: the login time, which proves a recent authentication. A
        # refreshed token keeps its session's login time: a refresh checks no password.
        "auth_time": subject.authenticated_at or int(now.timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# A token's signature and claims never change, only the clock moves: a token verified once
# is remembered, with its expiry (checked at every use, as PyJWT checks `exp`), so a
# client's later requests skip the HMAC and the JSON (~100 µs of a POST's CPU). Only
# tokens that passed verification are kept, keyed with the secret that verified them;
# whether the token is still *current* (its session not revoked) is never cached: every
# request reads it from the database, so a revocation holds at once in every process.
# Used from the event loop only (the cache is not thread-safe).
VERIFIED_TOKENS_MAX = 4096


@dataclass(frozen=True, slots=True)
class _Verified:
    subject: TokenSubject
    expires_at: float  # epoch seconds, the `exp` claim


_verified: TLRUCache[tuple[str, str], _Verified] = TLRUCache(
    maxsize=VERIFIED_TOKENS_MAX, ttu=lambda _key, verified, _now: verified.expires_at, timer=time.time
)


def read_access_token(token: str, *, secret: str) -> TokenSubject | None:
    """Whom a token was issued to, or None if it is not a valid, current token.

    The algorithm is pinned (no `alg: none`, no key confusion) and every claim we rely
    on is required.
    """
    verified = _verified.get((secret, token))
    if verified is not None:
        return verified.subject
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "sid", "exp", "iat"]}
        )
        user_id, session_id, expires_at = int(claims["sub"]), claims["sid"], float(claims["exp"])
    except (jwt.PyJWTError, ValueError, TypeError):
        return None  # a token from before sessions (no `sid`) included
    if not (1 <= user_id <= MAX_ID and isinstance(session_id, int) and 1 <= session_id <= MAX_ID):
        return None
    # Optional: a token issued before the claim existed is valid, but proves no recent login.
    authenticated_at = claims.get("auth_time", 0)
    subject = TokenSubject(user_id, session_id, authenticated_at if isinstance(authenticated_at, int) else 0)
    _verified[secret, token] = _Verified(subject, expires_at)
    return subject


def verified_user_id(token: str, *, secret: str) -> int | None:
    """The user of a token this process has verified and that has not expired; no verification.

    For the access log: a cache lookup, so that logging who asked costs no HMAC.
    """
    verified = _verified.get((secret, token))
    return verified.subject.user_id if verified is not None else None


def hashing_statistics(concurrency: int) -> tuple[int, int]:
    """How many password hashes this process is computing, and how many wait for a thread."""
    statistics = _hash_limiter(concurrency).statistics()
    return statistics.borrowed_tokens, statistics.tasks_waiting
