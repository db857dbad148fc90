"""Sending mail: over SMTP (`SMTP_URL`), or without it to the log and `MAIL_OUTBOX`.

Routes never wait for a mail: they queue it with FastAPI's `BackgroundTasks`, which run
after the response is sent, so after the request's transaction has committed (a mail never
names a token that was not stored), and a slow or unreachable mail server changes neither
a response nor its timing. Each mail is bounded by `MAIL_TIMEOUT_SECONDS`; a failure is
logged (without the SMTP password, the recipient or the body) and not retried.

Without `SMTP_URL` (development, `make run`): in development and test the log *is* the
outbox, so the whole message, token included, is logged at INFO; in production only
"mail not sent" is logged, never a message's body (it holds a credential). `MAIL_OUTBOX`
also writes each message as an `.eml` file into that folder, in any environment.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Annotated

import aiosmtplib
import anyio
from fastapi import Depends

from blogapi.config import Environment, Settings, SettingsDep, SmtpServer, smtp_server

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    body: str


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: SmtpServer | None = smtp_server(settings.smtp_url) if settings.smtp_url else None

    def message(self, mail: Mail) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain="blogapi")
        message.set_content(mail.body)
        return message

    async def send(self, mail: Mail) -> None:
        """Send one mail, within MAIL_TIMEOUT_SECONDS; raises if it could not be handed over."""
        message = self.message(mail)
        if self.settings.mail_outbox is not None:
            await _write_eml(self.settings.mail_outbox, message)
        if self.server is None:
            if self.settings.environment is Environment.PRODUCTION:
                logger.warning("mail not sent (SMTP_URL is not set): %s", mail.subject)
            else:
                logger.info("mail (SMTP_URL is not set, so it is only logged):\n%s", message.as_string())
            return
        server = self.server
        with anyio.fail_after(self.settings.mail_timeout_seconds):
            await aiosmtplib.send(
                message,
                hostname=server.hostname,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.implicit_tls,
                start_tls=None if not server.require_starttls else True,
                timeout=self.settings.mail_timeout_seconds,
            )

    async def deliver(self, mails: Sequence[Mail]) -> None:
        """Send each mail; log, never raise, what fails (a background task has no one to tell)."""
        for mail in mails:
            try:
                await self.send(mail)
            except TimeoutError:
                logger.error("mail not sent: %s timed out (%s)", self._where(), mail.subject)
            except Exception as exc:
                # The class and the server's words, never the URL's password (aiosmtplib's
                # messages hold the host and the reply, not the credentials).
                logger.error(
                    "mail not sent: %s refused or failed (%s: %s) for %r",
                    self._where(),
                    exc.__class__.__name__,
                    _without(str(exc), self.server),
                    mail.subject,
                )
            else:
                if self.server is not None:
                    logger.info("mail sent via %s: %s", self.server.redacted, mail.subject)

    def _where(self) -> str:
        return self.server.redacted if self.server else "the outbox"


def _without(text: str, server: SmtpServer | None) -> str:
    if server is not None and server.password:
        text = text.replace(server.password, "***")
    return text


async def _write_eml(outbox: Path, message: EmailMessage) -> None:
    def write() -> None:
        outbox.mkdir(parents=True, exist_ok=True)
        # Sorted by when they were written; the random part keeps two at once apart.
        path = outbox / f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}.eml"
        path.write_bytes(bytes(message))
        path.chmod(0o600)  # it holds a credential

    await anyio.to_thread.run_sync(write)


async def get_mailer(settings: SettingsDep) -> Mailer:
    return Mailer(settings)


MailerDep = Annotated[Mailer, Depends(get_mailer)]
