"""An SMTP server in the test process (aiosmtpd, on a free port) that keeps what it receives."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_USER = "mailer"
SMTP_PASSWORD = "s3cret-smtp-p4ss"
TOKEN_LINE = re.compile(r"^\s*token: (\S+)\s*$", re.MULTILINE)


class Inbox:
    """The aiosmtpd handler: every message it accepts, parsed as a mail client would."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.authenticated: list[bool] = []
        """Per message, whether its sender had logged in (AUTH)."""
        self._lock = threading.Lock()

    async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:  # noqa: N802  (aiosmtpd's name)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
            self.authenticated.append(bool(session.authenticated))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [message for message in self.messages if message["To"] == address]

    def token(self, address: str, subject: str) -> str:
        """The token in the latest mail to `address` whose subject holds `subject`, read from
        its text as its reader would."""
        mails = [message for message in self.to(address) if subject in message["Subject"]]
        assert mails, f"no mail about {subject!r} to {address}: {[m['Subject'] for m in self.messages]}"
        body = mails[-1].get_body(preferencelist=("plain",))
        assert body is not None
        found = TOKEN_LINE.search(body.get_content())
        assert found, body.get_content()
        return found.group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _authenticate(_server: Any, _session: Any, _envelope: Any, mechanism: str, data: Any) -> AuthResult:
    if isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    ):
        return AuthResult(success=True)
    return AuthResult(success=False, handled=False)


@contextmanager
def smtp_server(*, require_auth: bool = False) -> Iterator[tuple[Inbox, int]]:
    """A running SMTP server and its port; with `require_auth` it offers AUTH (over plain text: a
    test server on the loopback), refuses any login but SMTP_USER/SMTP_PASSWORD, and records
    who logged in (`Inbox.authenticated`). (aiosmtpd's `auth_required` without TLS warns.)"""
    inbox = Inbox()
    port = free_port()
    options: dict[str, Any] = {}
    if require_auth:
        options = {"authenticator": _authenticate, "auth_require_tls": False}
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
