"""Send Email against in-process aiosmtpd servers: TLS modes, AUTH, recipients, faults."""

from __future__ import annotations

import base64
import email
import traceback
from email import policy

import pytest

from mailwright import errors
from mailwright.services.app import Services
from mailwright.services.sending import AttachmentIn, SendEmailRequest
from tests.integration.conftest import PASSWORD, Targets
from tests.support.smtpserver import Faults, SMTPServerFactory


def request(target: str, **fields: object) -> SendEmailRequest:
    fields.setdefault("to", ["bob@example.net"])
    fields.setdefault("subject", "Hello")
    fields.setdefault("body", "Body text")
    return SendEmailRequest.model_validate({"target": target, **fields})


async def test_plain_open_relay_with_bcc_in_envelope_only(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    result = await mw.sending.send(
        request(
            target.display_name,
            **{"from": "Ops <ops@example.org>"},
            to="bob@example.net, carol@example.net",
            cc=["dave@example.net"],
            bcc="hidden@example.net",
        )
    )
    assert result.status == "sent"
    assert result.account_key is None
    assert [r.address for r in result.recipients] == [
        "bob@example.net",
        "carol@example.net",
        "dave@example.net",
        "hidden@example.net",
    ]
    assert all(r.status == "accepted" and r.code == 250 for r in result.recipients)
    assert result.server_reply.code == 250
    (received,) = server.wait_for(1)
    assert received.mail_from == "ops@example.org"
    assert sorted(received.rcpt_tos) == sorted(r.address for r in result.recipients)
    assert b"hidden@example.net" not in received.content
    parsed = email.message_from_bytes(received.content, policy=policy.default)
    assert parsed["Message-ID"] == result.message_id
    assert result.message_id.endswith("@example.org>")
    assert "total" in result.timings and result.timings["data"] >= 0
    assert result.warnings == []  # plain text over loopback is not worth a warning


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
async def test_tls_and_auth_with_default_sender(
    mode: str, mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls=mode, users={"alice@example.org": PASSWORD})  # type: ignore[arg-type]
    key = targets.key(sender="Alice <alice@example.org>")
    target = targets.target(server, security=mode, key=key)
    result = await mw.sending.send(request(target.display_name))
    assert result.account_key == "alice"
    assert result.warnings == []
    (received,) = server.wait_for(1)
    assert received.tls
    assert received.auth_login == "alice@example.org"
    parsed = email.message_from_bytes(received.content, policy=policy.default)
    assert str(parsed["From"]) == "Alice <alice@example.org>"


async def test_from_defaults_to_username_then_explicit(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="starttls", users={"alice@example.org": PASSWORD})
    target = targets.target(server, security="starttls", key=targets.key())
    await mw.sending.send(request(target.display_name))
    await mw.sending.send(request(target.display_name, **{"from": "other@example.org"}))
    first, second = server.wait_for(2)
    assert first.mail_from == "alice@example.org"
    assert second.mail_from == "other@example.org"


async def test_no_account_keys_needs_a_from(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    with pytest.raises(errors.ValidationError, match="From is required"):
        await mw.sending.send(request(target.display_name))
    assert server.connections == 0


async def test_refused_recipient_stops_the_send_unless_allowed(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    faults = Faults(refuse_recipients={"nobody@example.net": (550, "5.1.1 No such user")})
    server = smtp_server_factory(faults=faults)
    target = targets.target(server, security="none")
    fields = {"from": "ops@example.org", "to": ["bob@example.net", "nobody@example.net"]}
    with pytest.raises(errors.RecipientsRefusedError) as info:
        await mw.sending.send(request(target.display_name, **fields))
    assert "nobody@example.net: 550 5.1.1 No such user" in str(info.value)
    assert "continue_if_one_address_valid" in str(info.value)
    assert not info.value.transient
    assert server.messages == []

    result = await mw.sending.send(request(target.display_name, continue_if_one_address_valid=True, **fields))
    assert result.status == "partial"
    refused = [r for r in result.recipients if r.status == "refused"]
    assert [(r.address, r.code, r.reply) for r in refused] == [
        ("nobody@example.net", 550, "5.1.1 No such user")
    ]
    (received,) = server.wait_for(1)
    assert received.rcpt_tos == ["bob@example.net"]


async def test_every_recipient_refused_fails_even_when_partial_allowed(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(
        faults=Faults(refuse_recipients={"bob@example.net": (450, "4.2.1 Mailbox busy")})
    )
    target = targets.target(server, security="none")
    with pytest.raises(errors.RecipientsRefusedError) as info:
        await mw.sending.send(
            request(target.display_name, **{"from": "ops@example.org"}, continue_if_one_address_valid=True)
        )
    assert info.value.transient  # only 4xx refusals: worth retrying
    assert server.messages == []


async def test_message_larger_than_size_is_refused_before_sending(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(size_limit=20_000)
    target = targets.target(server, security="none")
    blob = base64.b64encode(b"\x01" * 30_000).decode()
    with pytest.raises(errors.MessageTooLargeError) as info:
        await mw.sending.send(
            request(
                target.display_name,
                **{"from": "ops@example.org"},
                attachments=[AttachmentIn(filename="big.bin", content=blob)],
            )
        )
    assert "accepts at most 19.5 KiB (SIZE 20000)" in str(info.value)
    assert info.value.limit == 20_000
    assert not any(stage == "mail" for stage, _ in server.faults_applied)
    assert server.messages == []


async def test_attachments_arrive_intact(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(size_limit=1_000_000)
    target = targets.target(server, security="none")
    payload = bytes(range(256)) * 100
    await mw.sending.send(
        request(
            target.display_name,
            **{"from": "ops@example.org"},
            html="<p>Report attached</p>",
            attachments=[
                AttachmentIn(filename="data.bin", content=base64.b64encode(payload).decode()),
                AttachmentIn(filename="notes.txt", content=base64.b64encode(b"hi").decode()),
            ],
        )
    )
    (received,) = server.wait_for(1)
    parsed = email.message_from_bytes(received.content, policy=policy.default)
    found = {a.get_filename(): (a.get_content_type(), a.get_content()) for a in parsed.iter_attachments()}
    assert found["data.bin"] == ("application/octet-stream", payload)
    assert found["notes.txt"][0] == "text/plain"


async def test_smtputf8_used_when_offered(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(smtputf8=True)
    target = targets.target(server, security="none")
    result = await mw.sending.send(
        request(target.display_name, **{"from": "ops@example.org"}, to=["dörte@example.net"])
    )
    assert result.smtputf8
    (received,) = server.wait_for(1)
    assert received.smtputf8
    assert received.rcpt_tos == ["dörte@example.net"]
    assert "dörte@example.net".encode() in received.content


async def test_smtputf8_missing_refuses_only_that_recipient(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(smtputf8=False)
    target = targets.target(server, security="none")
    fields = {"from": "ops@example.org", "to": ["dörte@example.net", "bob@example.net"]}
    result = await mw.sending.send(request(target.display_name, continue_if_one_address_valid=True, **fields))
    refused = [r for r in result.recipients if r.status == "refused"]
    assert refused[0].address == "dörte@example.net"
    assert "SMTPUTF8" in refused[0].reply
    (received,) = server.wait_for(1)
    assert received.rcpt_tos == ["bob@example.net"]
    assert received.content.isascii()
    with pytest.raises(errors.RecipientsRefusedError, match="SMTPUTF8"):
        await mw.sending.send(
            request(target.display_name, **{"from": "ops@example.org"}, to=["dörte@example.net"])
        )


@pytest.mark.parametrize(
    ("faults", "error", "words"),
    [
        (Faults(reply={"connect": (554, "5.3.2 Go away")}), errors.TargetRejectedError, "554 5.3.2 Go away"),
        (Faults(reply={"connect": (421, "4.3.2 Busy")}), errors.TargetDeferredError, "421"),
        (Faults(reply={"mail": (451, "4.3.0 Try later")}), errors.TargetDeferredError, "451 4.3.0 Try later"),
        (
            Faults(reply={"mail": (553, "5.7.1 Sender denied")}),
            errors.TargetRejectedError,
            "refused the sender",
        ),
        (Faults(reply={"data": (554, "5.7.1 Spam")}), errors.TargetRejectedError, "refused the message: 554"),
        (Faults(reply={"data": (452, "4.3.1 Full")}), errors.TargetDeferredError, "452 4.3.1 Full"),
        (Faults(disconnect_at="mail"), errors.TargetConnectError, "closed the connection during mail"),
        (Faults(disconnect_at="after_data"), errors.TargetConnectError, "may or may not"),
        (Faults(delay={"rcpt": 3.0}), errors.TargetTimeoutError, "did not answer in time during rcpt"),
        (
            Faults(delay={"data": 3.0}),
            errors.TargetTimeoutError,
            "did not answer within 1 s after the message",
        ),
        (Faults(reply={"ehlo": (554, "5.5.0 No")}), errors.TargetRejectedError, "554 5.5.0 No"),
        (Faults(disconnect_at="connect"), errors.TargetConnectError, "closed the connection during connect"),
        (Faults(disconnect_at="rcpt"), errors.TargetConnectError, "closed the connection during rcpt"),
    ],
)
async def test_faults_become_specific_errors(
    faults: Faults,
    error: type[errors.TargetError],
    words: str,
    mw: Services,
    targets: Targets,
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory(faults=faults)
    target = targets.target(server, security="none", command_timeout=1, data_timeout=1)
    with pytest.raises(error) as info:
        await mw.sending.send(request(target.display_name, **{"from": "ops@example.org"}))
    assert words in str(info.value)
    assert info.value.target == target.display_name
    assert info.value.transient == issubclass(
        error, errors.TargetDeferredError | errors.TargetConnectError | errors.TargetTimeoutError
    )


async def test_wrong_password_is_explained_and_never_leaks(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="ssl", users={"alice@example.org": "the-right-one"})
    target = targets.target(server, security="ssl", key=targets.key())
    with pytest.raises(errors.TargetAuthError) as info:
        await mw.sending.send(request(target.display_name))
    text = "".join(traceback.format_exception(info.value)) + repr(info.value.details())
    assert "refused the login of account key 'alice'" in text
    assert PASSWORD not in text
    assert base64.b64encode(PASSWORD.encode()).decode() not in text
    assert base64.b64encode(f"\0alice@example.org\0{PASSWORD}".encode()).decode() not in text
    assert server.auth_attempts == [("alice@example.org", False)]


async def test_temporary_auth_failure_is_transient(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(
        tls="ssl",
        users={"alice@example.org": PASSWORD},
        faults=Faults(reply={"auth": (454, "4.7.0 Try again")}),
    )
    target = targets.target(server, security="ssl", key=targets.key())
    with pytest.raises(errors.TargetDeferredError, match=r"454 4\.7\.0 Try again") as info:
        await mw.sending.send(request(target.display_name))
    assert info.value.transient
