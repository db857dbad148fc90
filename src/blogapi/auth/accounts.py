"""Password reset and email verification: tokens sent by mail. Never commits.

A token is 256 random bits, handed out only in a mail and stored only as its SHA-256 (as
refresh tokens are). It works once: using it is a conditional UPDATE (`used_at IS NULL`),
so of two requests with one token exactly one succeeds, on every backend (a row lock on
PostgreSQL and MariaDB, whose UPDATE reads the latest committed row; BEGIN IMMEDIATE on
SQLite).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from blogapi.auth import throttle
from blogapi.auth.models import MailToken
from blogapi.auth.security import hash_password
from blogapi.auth.sessions import service as sessions_service
from blogapi.config import Settings
from blogapi.db import AnyRow, Database, utcnow, violates
from blogapi.errors import (
    EmailNotVerified,
    EmailTaken,
    InvalidResetToken,
    InvalidVerificationToken,
)
from blogapi.mail import Mail, Mailer
from blogapi.users.models import User

logger = logging.getLogger(__name__)

MAIL_TOKEN_BYTES = 32
PRUNE_BATCH = 8
"""Used or expired tokens deleted per token issued: more than the one issued."""

RESET = "reset"
VERIFY = "verify"
CHANGE = "change"

INVALID_RESET_TOKEN = "the reset token is unknown, used or expired: ask for a new one"  # noqa: S105
INVALID_VERIFICATION_TOKEN = "the verification token is unknown, used or expired: ask for a new one"  # noqa: S105
EMAIL_NOT_VERIFIED = "verify your email address before publishing: see the mail sent to it"
RESET_ACCEPTED = "if an account has this email, a mail with a reset token is on its way"


def hash_mail_token(token: str) -> str:
    # SHA-256 without salt or stretching: the token is 256 random bits, not a password.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


_INSERT = insert(MailToken).values(
    token_hash=bindparam("hash"),
    user_id=bindparam("owner_id"),
    purpose=bindparam("kind"),
    email=bindparam("address"),
    created_at=bindparam("now"),
    expires_at=bindparam("until"),
)
_FORGET_UNUSED = delete(MailToken).where(
    MailToken.user_id == bindparam("user_id"),
    MailToken.purpose.in_(bindparam("purposes", expanding=True)),
    MailToken.used_at.is_(None),
)
_FIND = select(
    MailToken.user_id, MailToken.purpose, MailToken.email, MailToken.expires_at, MailToken.used_at
).where(MailToken.token_hash == bindparam("token_hash"))
_USE = (
    update(MailToken)
    .where(
        MailToken.token_hash == bindparam("hash"),
        MailToken.purpose.in_(bindparam("purposes", expanding=True)),
        MailToken.used_at.is_(None),
        MailToken.expires_at > bindparam("now"),
    )
    .values(used_at=bindparam("now"), expires_at=bindparam("now"))
)
_PRUNABLE = select(MailToken.token_hash).where(MailToken.expires_at < bindparam("now")).limit(PRUNE_BATCH)
_PRUNE = delete(MailToken).where(
    MailToken.token_hash.in_(bindparam("hashes", expanding=True)), MailToken.expires_at < bindparam("now")
)
_ACCOUNT_BY_EMAIL = select(User.id, User.email, User.is_active).where(User.email == bindparam("email"))


async def issue(
    connection: AsyncConnection, user_id: int, purpose: str, email: str, lifetime: timedelta
) -> str:
    """A new token for `purpose`, in place of the account's earlier unused ones of its kind
    (a verification replaces a pending change too: only the latest address is proven)."""
    now = utcnow()
    purposes = [RESET] if purpose == RESET else [VERIFY, CHANGE]
    await connection.execute(_FORGET_UNUSED, {"user_id": user_id, "purposes": purposes})
    token = secrets.token_urlsafe(MAIL_TOKEN_BYTES)
    values = {
        "hash": hash_mail_token(token),
        "owner_id": user_id,
        "kind": purpose,
        "address": email,
        "now": now,
        "until": now + lifetime,
    }
    await connection.execute(_INSERT, values)
    hashes = list(await connection.scalars(_PRUNABLE, {"now": now}))
    if hashes:
        await connection.execute(_PRUNE, {"hashes": hashes, "now": now})
    return token


async def _use(connection: AsyncConnection, token: str, purposes: list[str]) -> AnyRow | None:
    """The token's row if it was usable and is now used (by this transaction), else None."""
    now = utcnow()
    token_hash = hash_mail_token(token)
    found = (await connection.execute(_FIND, {"token_hash": token_hash})).one_or_none()
    if found is None or found.purpose not in purposes or found.used_at is not None or found.expires_at <= now:
        return None
    used = await connection.execute(_USE, {"hash": token_hash, "purposes": purposes, "now": now})
    return found if used.rowcount == 1 else None


# --- password reset ---------------------------------------------------------------------------


async def request_reset(database: Database, email: str, address: str, settings: Settings) -> bool:
    """Count the request (TooManyRequests past the address's limit); whether to send a mail.

    The same statements run whether or not an account has `email`: the account is looked
    up only in `send_reset`, which runs after the response (a background task).
    """
    async with database.engine.begin() as connection:
        return await throttle.reserve_reset(connection, email, address, settings)


def _reset_mail(email: str, token: str, settings: Settings) -> Mail:
    return Mail(
        to=email,
        subject="Reset your blogapi password",
        body=(
            f"Someone (we hope you) asked to reset the password of the blogapi account {email}.\n"
            "\n"
            f"This token sets a new password, once, within {settings.password_reset_minutes} minutes:\n"
            "\n"
            f"    token: {token}\n"
            "\n"
            "Send it with your new password:\n"
            "\n"
            "    POST /api/v1/auth/password-reset/confirm\n"
            f'    {{"token": "{token}", "new_password": "..."}}\n'
            "\n"
            "Setting it logs out every session of the account. If you did not ask for this, ignore\n"
            "this mail: your password stays as it is.\n"
        ),
    )


async def send_reset(database: Database, mailer: Mailer, email: str, settings: Settings) -> None:
    """The background half of a reset request: a token and its mail, if an active account has `email`.

    The token is committed before the mail is sent.
    """
    try:
        async with database.engine.begin() as connection:
            account = (await connection.execute(_ACCOUNT_BY_EMAIL, {"email": email})).one_or_none()
            if account is None or not account.is_active:
                return  # nothing to tell anyone: the answer was sent already, the same either way
            lifetime = timedelta(minutes=settings.password_reset_minutes)
            token = await issue(connection, account.id, RESET, account.email, lifetime)
    except Exception:
        logger.exception("password reset mail not prepared: the database failed")
        return
    await mailer.deliver([_reset_mail(account.email, token, settings)])


async def reset_password_hash(database: Database, token: str, new_password: str, settings: Settings) -> str:
    """The new password's hash, if the token may still be used (InvalidResetToken if not).

    The check reads, on a connection closed before the hash: a wrong token costs no Argon2
    work, and the hash (tens of milliseconds in a thread) holds no connection.
    """
    async with database.read_engine.connect() as connection:
        found = (await connection.execute(_FIND, {"token_hash": hash_mail_token(token)})).one_or_none()
    if found is None or found.purpose != RESET or found.used_at is not None or found.expires_at <= utcnow():
        raise InvalidResetToken(INVALID_RESET_TOKEN)
    return await hash_password(new_password, concurrency=settings.hash_concurrency)


async def confirm_reset(connection: AsyncConnection, token: str, password_hash: str) -> int:
    """Use the token: set the account's password to `password_hash` and end every session.

    Receiving the mail proves the address too: the account's email is verified. The
    account's id; InvalidResetToken if the token was used (by a concurrent confirm
    included), expired, or its account's email changed since it was sent.
    """
    found = await _use(connection, token, [RESET])
    if found is None:
        raise InvalidResetToken(INVALID_RESET_TOKEN)
    changed = await connection.execute(
        _bump(User.email == bindparam("address")).values(password_hash=password_hash, email_verified=True),
        {"user_id": found.user_id, "address": found.email, "now": utcnow()},
    )
    if changed.rowcount != 1:
        raise InvalidResetToken(INVALID_RESET_TOKEN)
    await sessions_service.revoke_all(connection, found.user_id)
    user_id: int = found.user_id
    return user_id


def _bump(*conditions: Any) -> Any:
    """An UPDATE of the user `user_id` that counts as a change (version, updated_at)."""
    return (
        update(User)
        .where(User.id == bindparam("user_id"), *conditions)
        .values(version=User.version + 1, updated_at=bindparam("now"))
    )


# --- email verification -------------------------------------------------------------------------


def _verification_mail(email: str, token: str, settings: Settings) -> Mail:
    return Mail(
        to=email,
        subject="Confirm your email address for blogapi",
        body=(
            f"Please confirm that {email} is your address for blogapi, within"
            f" {settings.verification_hours} hours, with this token:\n"
            "\n"
            f"    token: {token}\n"
            "\n"
            "    POST /api/v1/auth/verify\n"
            f'    {{"token": "{token}"}}\n'
            "\n"
            "If you did not sign up or change your address, ignore this mail.\n"
        ),
    )


def _change_notice(old_email: str, new_email: str, *, pending: bool) -> Mail:
    when = "once the new address is confirmed" if pending else "from now on"
    return Mail(
        to=old_email,
        subject="Your blogapi email address is changing",
        body=(
            f"The email address of your blogapi account {old_email} is changing to {new_email},"
            f" {when}.\n"
            "\n"
            "If this was not you, reset your password at once (POST /api/v1/auth/password-reset)\n"
            "and tell an administrator.\n"
        ),
    )


async def start_verification(
    connection: AsyncConnection, user_id: int, email: str, settings: Settings
) -> Mail:
    """A verification token for the account's address `email`, and its mail (to send after commit)."""
    token = await issue(connection, user_id, VERIFY, email, timedelta(hours=settings.verification_hours))
    return _verification_mail(email, token, settings)


async def change_email(
    connection: AsyncConnection, user_id: int, old_email: str, new_email: str, settings: Settings
) -> list[Mail]:
    """The mails of an email change: a verification to the new address, a notice to the old.

    With REQUIRE_VERIFIED_EMAIL the token carries the new address (`change`), which becomes
    the account's when verified; the caller leaves the email as it is. Without it the
    caller sets the new address at once, unverified, and the token proves it (`verify`).
    """
    pending = settings.require_verified_email
    purpose = CHANGE if pending else VERIFY
    token = await issue(connection, user_id, purpose, new_email, timedelta(hours=settings.verification_hours))
    return [
        _verification_mail(new_email, token, settings),
        _change_notice(old_email, new_email, pending=pending),
    ]


async def verify_email(connection: AsyncConnection, token: str) -> None:
    """Use a verification token: its address is verified (and, for a pending change, becomes the account's).

    InvalidVerificationToken if it is unknown, used, expired, or names an address the account
    no longer has; EmailTaken if a pending address was taken by another account meanwhile.
    """
    found = await _use(connection, token, [VERIFY, CHANGE])
    if found is None:
        raise InvalidVerificationToken(INVALID_VERIFICATION_TOKEN)
    values = {"user_id": found.user_id, "address": found.email, "now": utcnow()}
    if found.purpose == VERIFY:
        statement = _bump(User.email == bindparam("address")).values(email_verified=True)
    else:
        statement = _bump().values(email=bindparam("address"), email_verified=True)
    try:
        changed = await connection.execute(statement, values)
    except IntegrityError as exc:
        if violates(exc, "uq_user_email"):
            raise EmailTaken("another account has taken this address since the change was asked for") from exc
        raise
    if changed.rowcount != 1:
        raise InvalidVerificationToken(INVALID_VERIFICATION_TOKEN)


async def resend_verification(connection: AsyncConnection, user: AnyRow, settings: Settings) -> list[Mail]:
    """A new verification mail for the caller's address, if it is not verified yet (none if it is).

    Throttled per account (TooManyRequests).
    """
    await throttle.reserve_verification(connection, user.id, settings)
    if user.email_verified:
        return []
    return [await start_verification(connection, user.id, user.email, settings)]


def ensure_may_publish(user: AnyRow, settings: Settings) -> None:
    """With REQUIRE_VERIFIED_EMAIL, only a verified account publishes (EmailNotVerified)."""
    if settings.require_verified_email and not user.email_verified:
        raise EmailNotVerified(EMAIL_NOT_VERIFIED)
