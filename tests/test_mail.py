"""The mail sender: SMTP (with credentials that are never logged), and without SMTP_URL the
log and MAIL_OUTBOX, so that `make run` needs no mail server."""

from __future__ import annotations

import logging
import socket
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_SECRET
from mail_support import SMTP_PASSWORD, SMTP_USER, TOKEN_LINE, free_port, smtp_server
from pydantic import SecretStr, ValidationError

from blogapi.config import Environment, Settings
from blogapi.config import smtp_server as parse_smtp_url
from blogapi.mail import Mail, Mailer

MAIL = Mail(to="ada@example.com", subject="Reset your blogapi password", body="    token: abc123\n")


def settings_with(**values: Any) -> Settings:
    options: dict[str, Any] = {"secret_key": TEST_SECRET, "environment": Environment.TEST, "_env_file": None}
    return Settings(**{**options, **values})


async def test_without_smtp_url_outside_production_the_whole_mail_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="blogapi.mail"):
        await Mailer(settings_with(environment=Environment.DEVELOPMENT)).deliver([MAIL])
    assert "To: ada@example.com" in caplog.text
    assert TOKEN_LINE.search(caplog.text.replace("\r", ""))


async def test_without_smtp_url_in_production_only_mail_not_sent_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_with(environment=Environment.PRODUCTION, secret_key="p" * 48)
    with caplog.at_level(logging.DEBUG, logger="blogapi.mail"):
        await Mailer(settings).deliver([MAIL])
    assert "mail not sent" in caplog.text
    assert "abc123" not in caplog.text
    assert "ada@example.com" not in caplog.text


async def test_mail_outbox_holds_one_eml_file_per_message(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    mailer = Mailer(settings_with(mail_outbox=outbox, mail_from="blog <blog@example.com>"))
    await mailer.deliver([MAIL, Mail(to="bob@example.com", subject="Second", body="two\n")])

    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 2
    messages = [message_from_bytes(path.read_bytes(), policy=policy.default) for path in files]
    assert {message["To"] for message in messages} == {"ada@example.com", "bob@example.com"}
    assert {message["From"] for message in messages} == {"blog <blog@example.com>"}
    assert all(path.stat().st_mode & 0o077 == 0 for path in files)  # they hold credentials


async def test_mail_goes_over_smtp_with_the_credentials_of_smtp_url(caplog: pytest.LogCaptureFixture) -> None:
    with smtp_server(require_auth=True) as (inbox, port):
        url = f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}"
        with caplog.at_level(logging.DEBUG):
            await Mailer(settings_with(smtp_url=url, mail_from="blog@example.com")).deliver([MAIL])
    (message,) = inbox.messages
    assert inbox.authenticated == [True]
    assert message["To"] == "ada@example.com"
    assert message["From"] == "blog@example.com"
    assert message["Subject"] == MAIL.subject
    assert "mail sent via smtp://mailer:***@127.0.0.1" in caplog.text
    assert SMTP_PASSWORD not in caplog.text


async def test_a_refused_login_is_logged_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    with smtp_server(require_auth=True) as (inbox, port):
        url = f"smtp://{SMTP_USER}:wrong-{SMTP_PASSWORD}@127.0.0.1:{port}"
        with caplog.at_level(logging.DEBUG):
            await Mailer(settings_with(smtp_url=url)).deliver([MAIL])
    assert inbox.messages == []
    assert "mail not sent" in caplog.text
    assert SMTP_PASSWORD not in caplog.text
    assert "abc123" not in caplog.text


async def test_an_unreachable_server_is_logged_and_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    url = f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{free_port()}"
    with caplog.at_level(logging.ERROR, logger="blogapi.mail"):
        await Mailer(settings_with(smtp_url=url)).deliver([MAIL])
    assert "mail not sent" in caplog.text
    assert SMTP_PASSWORD not in caplog.text


async def test_a_server_that_never_answers_is_given_up_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"smtp://127.0.0.1:{silent.getsockname()[1]}"
        with caplog.at_level(logging.ERROR, logger="blogapi.mail"):
            await Mailer(settings_with(smtp_url=url, mail_timeout_seconds=0.5)).deliver([MAIL])
    assert "mail not sent" in caplog.text


async def test_starttls_required_of_a_server_without_it_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with smtp_server() as (inbox, port), caplog.at_level(logging.ERROR, logger="blogapi.mail"):
        await Mailer(settings_with(smtp_url=f"smtp://127.0.0.1:{port}?starttls=require")).deliver([MAIL])
    assert inbox.messages == []
    assert "mail not sent" in caplog.text


def test_smtp_url_gives_host_port_tls_and_credentials() -> None:
    plain = parse_smtp_url(SecretStr("smtp://user%40x:p%2Fss@mail.example.com"))
    assert (plain.hostname, plain.port, plain.implicit_tls, plain.require_starttls) == (
        "mail.example.com",
        587,
        False,
        False,
    )
    assert (plain.username, plain.password) == ("user@x", "p/ss")
    assert plain.redacted == "smtp://user@x:***@mail.example.com:587"
    implicit = parse_smtp_url(SecretStr("smtps://mail.example.com"))
    assert (implicit.port, implicit.implicit_tls) == (465, True)
    assert parse_smtp_url(SecretStr("smtp://h:2525?starttls=require")).require_starttls


@pytest.mark.parametrize(
    "url", ["http://user:hunter22@mail.example.com", "smtp://user:hunter22@", "smtp://user:hunter22@h:99999"]
)
def test_an_invalid_smtp_url_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings_with(smtp_url=url)
    assert "hunter22" not in str(refused.value)
    assert "SMTP_URL" in str(refused.value)


def test_the_smtp_password_is_not_in_the_settings_repr() -> None:
    settings = settings_with(smtp_url="smtp://user:hunter22@mail.example.com")
    assert "hunter22" not in repr(settings)


def test_the_log_stream_masks_the_smtp_password_whoever_logs_it() -> None:
    from blogapi.logs import secrets_of

    settings = settings_with(smtp_url="smtp://user:hunter22%21@mail.example.com")
    assert "hunter22!" in secrets_of(settings)
