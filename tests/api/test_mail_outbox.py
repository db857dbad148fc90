"""Without SMTP_URL (development, `make run`), mails land in MAIL_OUTBOX as .eml files, and
the tokens they hold work: the whole flow needs no mail server."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from conftest import Accounts
from mail_support import TOKEN_LINE

from blogapi.config import Settings


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


@pytest.fixture
def settings(settings: Settings, outbox: Path) -> Settings:
    return settings.model_copy(update={"smtp_url": None, "mail_outbox": outbox})


def read_outbox(outbox: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted(outbox.glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


async def test_without_smtp_url_the_verification_mail_is_an_eml_file_whose_token_works(
    client: httpx.AsyncClient, accounts: Accounts, outbox: Path
) -> None:
    account = await accounts.create()
    (mail,) = [message for message in read_outbox(outbox) if message["To"] == account.email]
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    found = TOKEN_LINE.search(body.get_content())
    assert found is not None

    assert (await client.post("/api/v1/auth/verify", json={"token": found.group(1)})).status_code == 204
    me = await client.get("/api/v1/users/me", headers=account.headers)
    assert me.json()["email_verified"] is True
