"""SASL for OAuth2 account keys: XOAUTH2 and OAUTHBEARER (RFC 7628), for SMTP, IMAP and POP3.

An OAuth2 key reaches a transport as a `Login` with `tokens` set. Before connecting,
`bearer_login` asks the key for an access token (the stage "token") and gives a
`Login` whose `password` is that token, so the mask of server text (`replies.ReplyMask`)
hides the token in every form exactly as it hides a password, XOAUTH2's
``user=…^Aauth=Bearer …^A^A`` among them.

Which mechanism: OAUTHBEARER when the server offers it, else XOAUTH2. OAUTHBEARER is
the IETF standard (RFC 7628): its message names the host and port the token is meant
for, and its error statuses are defined (RFC 6750's ``invalid_token``,
``insufficient_scope``…). XOAUTH2 is Google's earlier form of the same exchange, and
the only one Microsoft 365 offers (Gmail and Dovecot offer both).

On a refused token the server answers the client's message with a challenge carrying
base64 JSON, e.g. ``{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}``
(Google's and Dovecot's XOAUTH2) or ``{"status":"invalid_token"}`` (OAUTHBEARER); the
client answers with a dummy response (XOAUTH2: an empty line; OAUTHBEARER: ``^A``) and
then receives the final refusal. That JSON is decoded into the error (`BearerFailure`).

A token the server calls invalid (status 401 or ``invalid_token``), or a refusal with
no JSON at all (Microsoft answers ``535 5.7.3 Authentication unsuccessful`` alone), gets
one fresh token (`access_token(refresh=True)`) and one more attempt on the same
connection; a token refused again, or refused for its scope, is an error naming the
key and the fix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mailwright.errors import MailwrightError, TargetAuthError, TargetError
from mailwright.transport.base import Endpoint, Login
from mailwright.transport.replies import ReplyMask, quote_foreign

# Preferred first.
BEARER_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")

# The statuses after which a fresh token may succeed: Google's/Microsoft's "401", RFC 6750's "invalid_token".
_REFRESHABLE = frozenset({"401", "invalid_token"})
_SCOPE_STATUSES = frozenset({"403", "insufficient_scope"})


def choose_bearer_mechanism(offered: Iterable[str]) -> str | None:
    """OAUTHBEARER if offered, else XOAUTH2, else None (names compared case-insensitively)."""
    names = {name.upper() for name in offered}
    return next((m for m in BEARER_MECHANISMS if m in names), None)


def _saslname(text: str) -> str:
    # RFC 5801 section 4: ',' and '=' are escaped in the GS2 header's authzid.
    return text.replace("=", "=3D").replace(",", "=2C")


def initial_response(mechanism: str, *, username: str, token: str, host: str, port: int) -> bytes:
    """The client's first message (before base64) for `mechanism`; it carries the token."""
    if mechanism == "OAUTHBEARER":
        return (
            f"n,a={_saslname(username)},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
        ).encode()
    if mechanism == "XOAUTH2":
        return f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
    raise ValueError(f"not a bearer mechanism: {mechanism}")


def dummy_response(mechanism: str) -> bytes:
    """The answer to an error challenge (before base64): RFC 7628 3.2.3's ^A; XOAUTH2's nothing."""
    return b"\x01" if mechanism == "OAUTHBEARER" else b""


def carries_credentials(mechanism: str, username: str, token: str) -> bool:
    """Whether the mechanism's message can carry this username and token (no ^A, CR, LF or NUL)."""
    return not any(c in text for text in (username, token) for c in "\x01\r\n\0")


@dataclass(frozen=True, slots=True)
class BearerFailure:
    """What a server's error challenge said about a refused token (RFC 7628 3.2.2)."""

    status: str = ""
    scope: str = ""
    schemes: str = ""
    openid_configuration: str = ""

    @classmethod
    def parse(cls, challenge: bytes | str, *, encoded: bool = False) -> BearerFailure | None:
        """The JSON of an error challenge (base64 first when `encoded`), or None if it is not one."""
        data = challenge.encode("ascii", "replace") if isinstance(challenge, str) else challenge
        if encoded:
            try:
                data = base64.b64decode(data.strip(), validate=True)
            except (binascii.Error, ValueError):
                return None
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(parsed, dict) or not parsed:
            return None

        def text(key: str) -> str:
            value = parsed.get(key)
            shown = value if isinstance(value, str) else ("" if value is None else json.dumps(value))
            return quote_foreign(shown, 200)  # foreign text: bounded, controls visible

        return cls(
            status=text("status"),
            scope=text("scope"),
            schemes=text("schemes"),
            openid_configuration=text("openid-configuration"),
        )

    @property
    def refresh_may_help(self) -> bool:
        return self.status in _REFRESHABLE or not self.status

    def describe(self) -> str:
        """The server's JSON in words (each value bounded, controls visible, by `parse`)."""
        parts = [f"status {self.status}" if self.status else "no status"]
        if self.scope:
            parts.append(f"scope {self.scope}")
        if self.schemes:
            parts.append(f"schemes {self.schemes}")
        if self.openid_configuration:
            parts.append(f"openid-configuration {self.openid_configuration}")
        return ", ".join(parts)

    def masked(self, mask: ReplyMask) -> BearerFailure:
        return BearerFailure(*(mask(v) for v in dataclasses.astuple(self)))


class TokenRefusedError(TargetAuthError):
    """The server refused an OAuth2 account key's access token.

    `refresh_may_help` is True when a fresh token may succeed (the server called the
    token invalid, or said nothing about why); `failure` is the server's decoded JSON.
    """

    def __init__(
        self,
        message: str,
        *,
        failure: BearerFailure | None,
        refresh_may_help: bool,
        target: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, target=target, hint=hint)
        self.failure = failure
        self.refresh_may_help = refresh_may_help

    def details(self) -> dict[str, Any]:
        out = super().details()
        if self.failure is not None:
            out["server_error"] = {k: v for k, v in dataclasses.asdict(self.failure).items() if v}
        return out


def _refused_hint(login: Login, failure: BearerFailure | None, *, refreshed: bool) -> str:
    authorize = f"mailwright account-keys authorize {login.key_name}"
    if failure is not None and failure.status in _SCOPE_STATUSES:
        scope = f" ({failure.scope})" if failure.scope else ""
        return f"the token lacks the scope needed{scope}: add it to the key's scopes, then {authorize}"
    first = "a fresh token was refused too: " if refreshed else ""
    return (
        f"{first}check that the key's username {login.username!r} is the mailbox the token was "
        f"issued for and that the app may use this protocol (IMAP.AccessAsUser.All, SMTP.Send, "
        f"https://mail.google.com/); if consent was withdrawn, {authorize}"
    )


def token_refused(
    endpoint: Endpoint,
    login: Login,
    mechanism: str,
    reply: str,
    failure: BearerFailure | None,
    *,
    refreshed: bool,
) -> TokenRefusedError:
    """The error for a refused access token; `reply` is the server's final refusal (masked here)."""
    ep = endpoint
    mask = ReplyMask.of(login)
    if failure is not None:
        failure = failure.masked(mask)
    said = f"; the server said: {failure.describe()}" if failure is not None else ""
    reply = quote_foreign(mask(reply))
    again = " (after a refresh)" if refreshed else ""
    return TokenRefusedError(
        f"{ep.address} refused the access token{again} of OAuth2 account key {login.key_name!r} "
        f"(user {login.username}, {mechanism}): {reply}{said}",
        failure=failure,
        refresh_may_help=not refreshed and (failure is None or failure.refresh_may_help),
        target=ep.target_name,
        hint=_refused_hint(login, failure, refreshed=refreshed),
    )


def no_bearer_mechanism(endpoint: Endpoint, login: Login, offered: str) -> TargetAuthError:
    ep = endpoint
    return TargetAuthError(
        f"{ep.address} offers no OAuth2 login ({offered or 'no SASL mechanisms'}); OAuth2 account key "
        f"{login.key_name!r} needs XOAUTH2 or OAUTHBEARER",
        target=ep.target_name,
        hint=(
            "use the provider's host that accepts OAuth2 (smtp.office365.com, outlook.office365.com, "
            "smtp.gmail.com, imap.gmail.com), over ssl or starttls; or give this target a password key"
        ),
    )


async def bearer_login(login: Login, *, target: str, refresh: bool = False) -> Login:
    """`login` with its key's current access token as the password (`refresh=True`: a fresh one).

    The token source's failures keep their message and hint; those that are not
    target errors (a revoked grant) become a `TargetAuthError`, which stops a batch.
    """
    if login.tokens is None:
        return login
    try:
        token = await login.tokens.access_token(refresh=refresh)
    except TargetError as exc:
        exc.target = exc.target or target
        exc.stage = exc.stage or "token"
        raise
    except MailwrightError as exc:
        error = TargetAuthError(exc.message, target=target, hint=exc.hint)
        error.stage = "token"
        raise error from exc
    return dataclasses.replace(login, password=token)


__all__ = [
    "BEARER_MECHANISMS",
    "BearerFailure",
    "TokenRefusedError",
    "bearer_login",
    "carries_credentials",
    "choose_bearer_mechanism",
    "dummy_response",
    "initial_response",
    "no_bearer_mechanism",
    "token_refused",
]
