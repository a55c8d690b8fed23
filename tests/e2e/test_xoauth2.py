"""OAuth2 account keys over SASL (OAUTHBEARER, XOAUTH2) against real Postfix and Dovecot.

Dovecot checks each token with its ``oauth2`` passdb, which asks a local RFC 7662
introspection server (tests/support/dovecot_oauth.py); Postfix authenticates SMTP
clients through Dovecot's SASL, so the exchange on the wire is the real one. The
stack offers both mechanisms, and Mailwright prefers OAUTHBEARER; the XOAUTH2 runs
narrow Mailwright's preference to XOAUTH2 alone (as against a server offering only it).
"""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import uuid
from collections.abc import Iterator

import pytest

from mailwright.domain.smtp import Security
from mailwright.errors import MailwrightError, TargetAuthError, TargetDeferredError
from mailwright.secrets import Secret
from mailwright.transport import sasl
from mailwright.transport.base import Login, TokenSource
from mailwright.transport.imap import IMAPConnection, IMAPEndpoint
from mailwright.transport.imap import connection_report as imap_report
from mailwright.transport.pool import PoolLimits, SMTPPool
from mailwright.transport.pop3 import POP3Connection, POP3Endpoint
from mailwright.transport.replies import ReplyMask
from mailwright.transport.sasl import BearerFailure, TokenRefusedError, initial_response
from mailwright.transport.smtp import SMTPConnection, SMTPEndpoint
from mailwright.transport.smtp import connection_report as smtp_report
from mailwright.transport.tls import build_ssl_context
from tests.support.dovecot_oauth import MintedTokens, TokenIntrospection
from tests.support.mailstack import MailStack, make_message, missing_binaries
from tests.support.smtpserver import RawLineServer

pytestmark = pytest.mark.timeout(90)

MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def introspection() -> Iterator[TokenIntrospection]:
    with TokenIntrospection() as server:
        yield server


@pytest.fixture(scope="module")
def oauth_stack(introspection: TokenIntrospection) -> Iterator[MailStack]:
    """A Postfix + Dovecot pair whose Dovecot also accepts OAuth2 tokens (XOAUTH2, OAUTHBEARER)."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"Postfix/Dovecot programs not found ({', '.join(missing)})", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the e2e mail stack must run as root (Postfix/Dovecot)", pytrace=False)
    with MailStack(oauth2_introspection_url=introspection.url) as stack:
        yield stack


@pytest.fixture(params=MECHANISMS)
def mechanism(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The mechanism the run expects: Mailwright's preference narrowed to it."""
    name: str = request.param
    monkeypatch.setattr(sasl, "BEARER_MECHANISMS", (name,))
    return name


class FixedTokens:
    """A token source whose every token is `token` (a token the server never accepts, for one)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0
        self.refreshes = 0

    async def access_token(self, *, refresh: bool = False) -> Secret:
        self.calls += 1
        self.refreshes += refresh
        return Secret(self.token)


class FailingTokens:
    """A token source whose token endpoint refuses the grant."""

    async def access_token(self, *, refresh: bool = False) -> Secret:
        raise MailwrightError(
            "the refresh token of account key 'oauth-key' was revoked",
            hint="re-authorize this key: mailwright account-keys authorize oauth-key",
        )


def oauth_login(stack: MailStack, tokens: TokenSource, *, username: str | None = None) -> Login:
    return Login(
        key_name="oauth-key",
        username=username or stack.user_address,
        password=Secret(""),
        tokens=tokens,
    )


def submission(stack: MailStack) -> SMTPEndpoint:
    return SMTPEndpoint(
        target_name="Postfix submission",
        host=stack.host,
        port=stack.submission_port,
        security=Security.STARTTLS,
        ssl_context=build_ssl_context(ca_file=str(stack.ca_cert_path), verify=True),
        connect_timeout=5.0,
        command_timeout=15.0,
    )


def imaps(stack: MailStack) -> IMAPEndpoint:
    return IMAPEndpoint(
        target_name="Dovecot IMAP",
        host=stack.host,
        port=stack.imaps_port,
        security=Security.SSL,
        ssl_context=build_ssl_context(ca_file=str(stack.ca_cert_path), verify=True),
        connect_timeout=5.0,
        command_timeout=15.0,
    )


def pop3s(stack: MailStack) -> POP3Endpoint:
    return POP3Endpoint(
        target_name="Dovecot POP3",
        host=stack.host,
        port=stack.pop3s_port,
        security=Security.SSL,
        ssl_context=build_ssl_context(ca_file=str(stack.ca_cert_path), verify=True),
        connect_timeout=5.0,
        command_timeout=15.0,
    )


def assert_token_absent(error: BaseException, token: str) -> None:
    """Neither the token nor a base64 form of the SASL message carrying it shows anywhere."""
    shown = [str(error), repr(error), repr(error.args)]
    if isinstance(error, MailwrightError):
        shown.append(repr(error.details()))
    for text in shown:
        assert token not in text
        for mechanism in MECHANISMS:
            message = initial_response(mechanism, username="x", token=token, host="h", port=1)
            assert base64.b64encode(message).decode()[-20:] not in text


def deliver_plain(stack: MailStack, subject: str) -> None:
    """Put one message in the default user's INBOX through the port-25-like listener (no AUTH)."""
    before = len(stack.maildir_messages(stack.user_address))
    message = make_message("sender@example.org", stack.user_address, subject, "hello")
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=10) as smtp:
        smtp.sendmail("sender@example.org", [stack.user_address], message)
    stack.wait_for_maildir(stack.user_address, before + 1)


# --- SMTP ------------------------------------------------------------------------------


async def test_smtp_send_with_a_token_reaches_the_mailbox(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str
) -> None:
    stack = oauth_stack
    recipient = stack.address(f"rcpt-{uuid.uuid4().hex[:8]}")
    tokens = MintedTokens(introspection, stack.user_address)
    pool = SMTPPool(endpoint=submission(stack), login=oauth_login(stack, tokens), limits=PoolLimits())
    try:
        delivery = await pool.deliver(
            sender=stack.user_address,
            recipients=[(recipient, False)],
            data=make_message(stack.user_address, recipient, f"via {mechanism}", "sent with a token"),
            smtputf8=False,
            continue_if_one_address_valid=False,
        )
    finally:
        await pool.aclose()
    assert delivery.code == 250
    (raw,) = await asyncio.to_thread(stack.wait_for_maildir, recipient, 1)
    assert f"Subject: via {mechanism}".encode() in raw
    assert tokens.refreshes == 0
    assert introspection.introspected[-1] == tokens.current


@pytest.mark.parametrize("length", [100, 3000])
async def test_tokens_as_long_as_microsofts_log_in(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str, length: int
) -> None:
    """A 3,000-character token does not fit an SMTP command line (Postfix cuts AUTH lines at 2,048
    bytes): it answers the server's empty challenge instead. IMAP and POP3 always send it so."""
    stack = oauth_stack
    token = introspection.mint(stack.user_address, length=length)
    for opener in (
        SMTPConnection(submission(stack)),
        IMAPConnection(imaps(stack)),
        POP3Connection(pop3s(stack)),
    ):
        try:
            await opener.open(oauth_login(stack, FixedTokens(token)))
            assert opener.authenticated_as == stack.user_address
        finally:
            await opener.close()


async def test_smtp_connection_test_names_the_mechanism(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str
) -> None:
    stack = oauth_stack
    login = oauth_login(stack, MintedTokens(introspection, stack.user_address))
    report = await smtp_report(submission(stack), login)
    assert report["ok"], report["error"]
    assert report["auth_mechanism"] == mechanism
    assert report["authenticated_as"] == stack.user_address
    assert [s["name"] for s in report["steps"]][:2] == ["token", "connect"]


async def test_smtp_bad_token_gives_the_servers_json_error(oauth_stack: MailStack, mechanism: str) -> None:
    stack = oauth_stack
    bad = "bad-token-" + uuid.uuid4().hex
    tokens = FixedTokens(bad)
    connection = SMTPConnection(submission(stack))
    with pytest.raises(TokenRefusedError) as caught:
        await connection.open(oauth_login(stack, tokens))
    await connection.close()
    error = caught.value
    assert tokens.refreshes == 1  # refreshed once, tried once more, then gave up
    assert error.stage == "auth"
    assert "535" in error.message
    assert "after a refresh" in error.message
    if mechanism == "XOAUTH2":  # Dovecot's XOAUTH2 answer, as Google's
        assert error.failure == BearerFailure(status="401", schemes="bearer", scope="mail")
        assert "status 401, scope mail, schemes bearer" in error.message
    else:  # RFC 7628
        assert error.failure == BearerFailure(status="invalid_token")
        assert "status invalid_token" in error.message
    assert error.details()["server_error"]["status"] in ("401", "invalid_token")
    assert error.hint is not None and "mailwright account-keys authorize oauth-key" in error.hint
    assert_token_absent(error, bad)


async def test_smtp_expired_token_is_refreshed_once(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str
) -> None:
    stack = oauth_stack
    tokens = MintedTokens(introspection, stack.user_address, stale=True)
    connection = SMTPConnection(submission(stack))
    try:
        await connection.open(oauth_login(stack, tokens))
        assert connection.authenticated_as == stack.user_address
        assert connection.auth_mechanism == mechanism
    finally:
        await connection.close()
    assert (tokens.calls, tokens.refreshes) == (2, 1)


# --- IMAP ------------------------------------------------------------------------------


async def test_imap_login_with_a_token_reads_the_mailbox(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str
) -> None:
    stack = oauth_stack
    subject = f"for imap {uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(deliver_plain, stack, subject)
    tokens = MintedTokens(introspection, stack.user_address)
    async with IMAPConnection(imaps(stack)) as imap:
        await imap.open(oauth_login(stack, tokens))
        assert imap.auth_mechanism == f"AUTHENTICATE {mechanism}"
        await imap.select("INBOX", readonly=True)
        bodies = await imap.fetch_rfc822(await imap.search_uids("ALL"))
    assert any(f"Subject: {subject}".encode() in raw for raw in bodies.values())
    assert tokens.refreshes == 0


async def test_imap_connection_test_names_the_mechanism(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str
) -> None:
    stack = oauth_stack
    login = oauth_login(stack, MintedTokens(introspection, stack.user_address))
    report = await imap_report(imaps(stack), login)
    assert report["ok"], report["error"]
    assert report["auth_mechanism"] == f"AUTHENTICATE {mechanism}"
    assert [s["name"] for s in report["steps"]][:2] == ["token", "connect"]


async def test_imap_bad_token_gives_the_servers_json_error(oauth_stack: MailStack, mechanism: str) -> None:
    stack = oauth_stack
    bad = "bad-token-" + uuid.uuid4().hex
    tokens = FixedTokens(bad)
    imap = IMAPConnection(imaps(stack))
    with pytest.raises(TokenRefusedError) as caught:
        await imap.open(oauth_login(stack, tokens))
    error = caught.value
    assert tokens.refreshes == 1
    assert error.stage == "login"
    assert "[AUTHENTICATIONFAILED]" in error.message
    if mechanism == "XOAUTH2":
        assert error.failure == BearerFailure(status="401", schemes="bearer", scope="mail")
    else:
        assert error.failure == BearerFailure(status="invalid_token")
    assert_token_absent(error, bad)


async def test_imap_expired_token_is_refreshed_once(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str
) -> None:
    stack = oauth_stack
    tokens = MintedTokens(introspection, stack.user_address, stale=True)
    async with IMAPConnection(imaps(stack)) as imap:
        await imap.open(oauth_login(stack, tokens))
        assert imap.authenticated_as == stack.user_address
        await imap.select("INBOX", readonly=True)
    assert (tokens.calls, tokens.refreshes) == (2, 1)


async def test_token_for_another_mailbox_is_refused(
    oauth_stack: MailStack, introspection: TokenIntrospection
) -> None:
    """Dovecot compares the introspected username with the SASL user: a token is one mailbox's."""
    stack = oauth_stack
    tokens = MintedTokens(introspection, stack.address("someone-else"))
    imap = IMAPConnection(imaps(stack))
    with pytest.raises(TokenRefusedError) as caught:
        await imap.open(oauth_login(stack, tokens))
    assert caught.value.hint is not None and stack.user_address in caught.value.hint


# --- POP3 ------------------------------------------------------------------------------


async def test_pop3_expired_token_is_refreshed_once_and_reads(
    oauth_stack: MailStack, introspection: TokenIntrospection, mechanism: str
) -> None:
    stack = oauth_stack
    await asyncio.to_thread(deliver_plain, stack, f"for pop3 {uuid.uuid4().hex[:8]}")
    tokens = MintedTokens(introspection, stack.user_address, stale=True)
    async with POP3Connection(pop3s(stack)) as pop:
        await pop.open(oauth_login(stack, tokens))
        assert pop.auth_mechanism == f"SASL {mechanism}"
        count, _size = await pop.stat()
        await pop.close(commit=False)
    assert count >= 1
    assert (tokens.calls, tokens.refreshes) == (2, 1)


async def test_pop3_bad_token_gives_the_servers_json_error(oauth_stack: MailStack, mechanism: str) -> None:
    stack = oauth_stack
    bad = "bad-token-" + uuid.uuid4().hex
    tokens = FixedTokens(bad)
    pop = POP3Connection(pop3s(stack))
    with pytest.raises(TokenRefusedError) as caught:
        await pop.open(oauth_login(stack, tokens))
    error = caught.value
    assert tokens.refreshes == 1
    assert error.stage == "login"
    assert error.failure is not None and error.failure.status in ("401", "invalid_token")
    assert_token_absent(error, bad)


# --- servers as Microsoft's and others answer (scripted) --------------------------------

GREETING = "220 scripted ESMTP"


def scripted(*steps: str) -> RawLineServer:
    """An SMTP server answering each line the client sends with the next step (no TLS)."""
    return RawLineServer(script=(GREETING, *steps, "221 bye"))


def plain_endpoint(server: RawLineServer) -> SMTPEndpoint:
    return SMTPEndpoint(
        target_name="Scripted SMTP",
        host="127.0.0.1",
        port=server.port,
        security=Security.NONE,
        ssl_context=build_ssl_context(ca_file=None, verify=True),
        connect_timeout=5.0,
        command_timeout=5.0,
    )


def sent_lines(server: RawLineServer) -> list[bytes]:
    return [line.rstrip(b"\r\n") for line in server.received]


async def test_refusal_without_json_refreshes_once_then_names_the_key() -> None:
    """Microsoft 365 answers a bad token with a bare 535: a refresh may help, once."""
    tokens = FixedTokens("stale-token-" + "m" * 30)
    refusal = "535 5.7.3 Authentication unsuccessful [SN4PR0501CA0054.namprd05.prod.outlook.com]"
    with scripted("250-scripted\n250 AUTH LOGIN XOAUTH2", refusal, refusal) as server:
        connection = SMTPConnection(plain_endpoint(server))
        with pytest.raises(TokenRefusedError) as caught:
            await connection.open(Login("ms-key", "someone@contoso.test", Secret(""), tokens))
        await connection.close()
    assert tokens.refreshes == 1
    error = caught.value
    assert error.failure is None and "the server said" not in error.message
    assert "535 5.7.3 Authentication unsuccessful" in error.message and "XOAUTH2" in error.message
    auths = [line for line in sent_lines(server) if line.startswith(b"AUTH XOAUTH2 ")]
    assert len(auths) == 2
    assert_token_absent(error, tokens.token)


async def test_scope_refusal_is_not_refreshed() -> None:
    tokens = FixedTokens("narrow-token-" + "s" * 30)
    challenge = base64.b64encode(
        b'{"status":"insufficient_scope","scope":"https://outlook.office.com/SMTP.Send"}'
    )
    with scripted(
        "250-scripted\n250 AUTH OAUTHBEARER", f"334 {challenge.decode()}", "535 5.7.8 insufficient scope"
    ) as server:
        connection = SMTPConnection(plain_endpoint(server))
        with pytest.raises(TokenRefusedError) as caught:
            await connection.open(Login("narrow", "u@contoso.test", Secret(""), tokens))
        await connection.close()
    assert tokens.refreshes == 0
    assert caught.value.hint is not None and "SMTP.Send" in caught.value.hint
    assert sent_lines(server)[-2] == base64.b64encode(b"\x01")  # RFC 7628's dummy response


async def test_temporary_refusal_is_deferred_without_refresh() -> None:
    tokens = FixedTokens("some-token-" + "t" * 30)
    with scripted("250-scripted\n250 AUTH XOAUTH2", "454 4.7.0 Temporary authentication failure") as server:
        connection = SMTPConnection(plain_endpoint(server))
        with pytest.raises(TargetDeferredError) as caught:
            await connection.open(Login("k", "u@contoso.test", Secret(""), tokens))
        await connection.close()
    assert tokens.refreshes == 0
    assert caught.value.stage == "auth"


async def test_long_token_answers_the_empty_challenge() -> None:
    """As Microsoft documents it: AUTH XOAUTH2, 334, then the base64 message on its own line."""
    tokens = FixedTokens("long-token-" + "j" * 3000)
    with scripted("250-scripted\n250 AUTH XOAUTH2", "334 ", "235 2.7.0 Authentication successful") as server:
        connection = SMTPConnection(plain_endpoint(server))
        await connection.open(Login("k", "u@contoso.test", Secret(""), tokens))
        await connection.close()
    lines = sent_lines(server)
    start = lines.index(b"AUTH XOAUTH2")
    assert base64.b64decode(lines[start + 1]) == initial_response(
        "XOAUTH2", username="u@contoso.test", token=tokens.token, host="127.0.0.1", port=server.port
    )


async def test_server_without_oauth_mechanisms_is_named() -> None:
    tokens = FixedTokens("unused-token-" + "u" * 30)
    with scripted("250-scripted\n250 AUTH PLAIN LOGIN") as server:
        connection = SMTPConnection(plain_endpoint(server))
        with pytest.raises(TargetAuthError) as caught:
            await connection.open(Login("k", "u@contoso.test", Secret(""), tokens))
        await connection.close()
    assert "offers no OAuth2 login (AUTH PLAIN LOGIN)" in caught.value.message
    assert not any(line.startswith(b"AUTH") for line in sent_lines(server))


# --- the token source failing, and what needs no server ---------------------------------


async def test_token_source_failure_stops_before_connecting(oauth_stack: MailStack) -> None:
    stack = oauth_stack
    openers = (SMTPConnection(submission(stack)), IMAPConnection(imaps(stack)), POP3Connection(pop3s(stack)))
    for opener in openers:
        with pytest.raises(TargetAuthError) as caught:
            await opener.open(oauth_login(stack, FailingTokens()))
        await opener.close()
        error = caught.value
        assert error.stage == "token"
        assert "re-authorize this key" in (error.hint or "")
        assert "connect" not in opener.timings  # no connection was made


def test_bearer_failure_parsing() -> None:
    google = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
    parsed = BearerFailure.parse(google, encoded=True)
    assert parsed == BearerFailure(status="401", schemes="bearer", scope="https://mail.google.com/")
    assert parsed is not None and parsed.refresh_may_help
    scope = BearerFailure.parse(b'{"status":"insufficient_scope","scope":"mail"}')
    assert scope is not None and not scope.refresh_may_help
    assert BearerFailure.parse(b"not base64!", encoded=True) is None
    assert BearerFailure.parse(b"[1]") is None
    odd = BearerFailure.parse(b'{"status":"x\\n\\u0007y"}')
    assert odd is not None and odd.status == "x\\n\\x07y"  # foreign text: controls shown escaped


def test_oauthbearer_message_escapes_the_authorization_identity() -> None:
    message = initial_response("OAUTHBEARER", username="a,b=c@x", token="T", host="h", port=25)
    assert message == b"n,a=a=2Cb=3Dc@x,\x01host=h\x01port=25\x01auth=Bearer T\x01\x01"
    assert initial_response("XOAUTH2", username="u", token="T", host="h", port=1) == (
        b"user=u\x01auth=Bearer T\x01\x01"
    )


def test_mask_hides_both_tokens_after_a_refresh() -> None:
    first, second = "first-token-" + "a" * 20, "second-token-" + "b" * 20
    mask = ReplyMask.of(Login("k", "u@x", Secret(first))).also(
        ReplyMask.of(Login("k", "u@x", Secret(second)))
    )
    text = (
        f"{first} {second} "
        + base64.b64encode(
            initial_response("OAUTHBEARER", username="u@x", token=second, host="h", port=1)
        ).decode()
    )
    masked = mask(text)
    assert first not in masked and second not in masked
    assert masked.count("********") == 3
