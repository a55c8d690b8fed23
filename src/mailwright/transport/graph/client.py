"""A thin Microsoft Graph client on httpx: the bearer token, and Graph's answers as our errors.

Why not `msgraph-sdk`: see the package docstring. Each `GraphClient` holds one
`httpx.AsyncClient` (connections kept alive between its calls); use it as an async
context manager.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from mailwright.domain.capabilities import ChangesExpiredError
from mailwright.errors import (
    TargetAuthError,
    TargetConnectError,
    TargetDeferredError,
    TargetError,
    TargetRejectedError,
    TargetTimeoutError,
)
from mailwright.transport.base import Login, ms
from mailwright.transport.outbound import TargetPolicyError, outbound_policy
from mailwright.transport.replies import quote_foreign, response_text

log = logging.getLogger(__name__)
# httpx logs each request's URL at INFO; an upload session's URL carries its own credential.
logging.getLogger("httpx").setLevel(logging.WARNING)

PROTOCOL = "HTTPS"
GRANT_HINT = (
    "grant it in Entra ID → App registrations → your app → API permissions (Microsoft Graph, "
    "Application permissions), then Grant admin consent"
)
# Statuses worth trying again later: throttled, or the service is busy or down for now.
_DEFERRED = frozenset({429, 500, 502, 503, 504})
_RETRY_AFTER_DEFAULT = 30  # seconds, when Graph throttles without saying how long
_RETRY_AFTER_MAX = 3600


@dataclass(frozen=True, slots=True)
class GraphEndpoint:
    """Where one Graph target's calls go: `{graph_url}/v1.0/users/{mailbox}`."""

    target_name: str
    graph_url: str  # "https://graph.microsoft.com", no trailing slash
    mailbox: str  # user principal name or object id
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    verify: bool | str = True  # a CA file's path, for tests and private clouds

    @property
    def host(self) -> str:
        return urlsplit(self.graph_url).hostname or self.graph_url

    @property
    def port(self) -> int:
        parts = urlsplit(self.graph_url)
        return parts.port or (80 if parts.scheme == "http" else 443)

    @property
    def security(self) -> str:
        return "http" if urlsplit(self.graph_url).scheme == "http" else "https"

    def user_path(self, rest: str = "") -> str:
        """`/v1.0/users/{mailbox}{rest}`, the mailbox quoted as a path segment."""
        return f"/v1.0/users/{quote(self.mailbox, safe='@')}{rest}"


class GraphPermissionError(TargetAuthError):
    """Graph answered 403: the app registration lacks an application permission (or its consent)."""

    code = "permission_missing"

    def __init__(self, message: str, *, permission: str, target: str | None = None) -> None:
        super().__init__(message, target=target, hint=f"{GRANT_HINT} for {permission}")
        self.permission = permission

    def details(self) -> dict[str, Any]:
        return {**super().details(), "permission": self.permission}


class GraphNotFoundError(TargetError):
    """Graph answered 404: the mailbox, folder or message does not exist."""

    code = "graph_not_found"


class GraphSyncResetError(ChangesExpiredError):
    """Graph answered 410 Gone to a delta link: the sync state expired; start again without it."""

    code = "graph_sync_reset"


def retry_after_seconds(value: str | None, *, now: float | None = None) -> int | None:
    """`Retry-After` as whole seconds (it may be seconds or an HTTP date), bounded; None when absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), _RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wait = when.timestamp() - (now if now is not None else time.time())
    return max(0, min(math.ceil(wait), _RETRY_AFTER_MAX))


def graph_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of Graph's error body `{"error": {"code", "message"}}`, made safe to show."""
    code, message = "", ""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or "")
        message = str(body["error"].get("message") or "")
    elif response.content:
        message = response.text
    return quote_foreign(response_text(code), 100), quote_foreign(response_text(message))


def _said(status: int, code: str, message: str) -> str:
    parts = [str(status), code, message]
    return " ".join(p for p in parts if p).strip()


class GraphClient:
    """Calls to one mailbox's Graph endpoint with the account key's access token.

    `login` must carry a `TokenSource` (`Login.tokens`): Graph takes no password.
    """

    def __init__(
        self,
        endpoint: GraphEndpoint,
        login: Login | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        prefer_immutable_ids: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.login = login
        self.timings: dict[str, float] = {}
        self._http = httpx.AsyncClient(
            base_url=endpoint.graph_url,
            timeout=httpx.Timeout(endpoint.command_timeout, connect=endpoint.connect_timeout),
            verify=endpoint.verify,
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json"}
            # Ids that survive a move between folders (the mailbox's UIDs are made from them).
            | ({"Prefer": 'IdType="ImmutableId"'} if prefer_immutable_ids else {}),
        )
        self._token: str | None = None
        self._checked_hosts: set[str] = set()

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # --- the token ------------------------------------------------------------------

    async def token(self, *, refresh: bool = False) -> str:
        """The bearer token (fetched once per client; `refresh=True` after Graph refused it)."""
        if self._token is not None and not refresh:
            return self._token
        login = self.login
        if login is None or login.tokens is None:
            error = TargetAuthError(
                f"{self.endpoint.target_name!r} has no OAuth2 account key: Microsoft Graph takes an access "
                "token, never a password",
                target=self.endpoint.target_name,
                hint="give the target an OAuth2 Microsoft Graph Credentials account key (--account-key)",
            )
            error.stage = "token"
            raise error
        started = time.perf_counter()
        try:
            secret = await login.tokens.access_token(refresh=refresh)
        except TargetError as exc:
            exc.stage = exc.stage or "token"
            exc.target = exc.target or self.endpoint.target_name
            raise
        finally:
            self.timings["token"] = self.timings.get("token", 0.0) + ms(started)
        self._token = secret.reveal()
        return self._token

    # --- requests --------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        permission: str,
        action: str,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stage: str = "request",
        unknown_on_timeout: bool = False,
    ) -> httpx.Response:
        """One authorized call; a 2xx answer, or the error that says what to fix.

        `permission` is the application permission the call needs (named on a 403),
        `action` what the call does, for messages ("send the message"). `path` is
        relative to the Graph URL, or an absolute `@odata.nextLink`.
        """
        await self._check_policy(path)
        refreshed = False
        while True:
            token = await self.token(refresh=refreshed)
            response = await self._send(
                method,
                path,
                headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                json_body=json_body,
                params=params,
                stage=stage,
                unknown_on_timeout=unknown_on_timeout,
            )
            if response.status_code == 401 and not refreshed:
                refreshed = True  # an expired or revoked token: one fresh token, one more try
                log.info(
                    "Graph refused the access token of %r: refreshing it once", self.endpoint.target_name
                )
                continue
            if response.is_success:
                return response
            raise self._failure(response, permission=permission, action=action, stage=stage)

    async def upload(self, url: str, chunk: bytes, *, start: int, total: int) -> httpx.Response:
        """PUT one chunk to an upload session's pre-authenticated URL (no bearer: Graph refuses one)."""
        await self._check_policy(url)
        end = start + len(chunk) - 1
        response = await self._send(
            "PUT",
            url,
            headers={
                "Content-Range": f"bytes {start}-{end}/{total}",
                "Content-Type": "application/octet-stream",
            },
            content=chunk,
            stage="upload",
        )
        if response.is_success:
            return response
        raise self._failure(
            response, permission="Mail.ReadWrite", action="upload an attachment", stage="upload"
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        json_body: Any = None,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        stage: str,
        unknown_on_timeout: bool = False,
    ) -> httpx.Response:
        ep = self.endpoint
        started = time.perf_counter()
        where = f"Microsoft Graph at {ep.graph_url}"
        try:
            return await self._http.request(
                method, url, headers=headers, json=json_body, params=params, content=content
            )
        except httpx.ConnectTimeout as exc:
            error: TargetError = TargetTimeoutError(
                f"{where}: no connection within {ep.connect_timeout:g} s",
                target=ep.target_name,
                hint="check the Graph URL (--graph-url) and that this host may reach it (proxy, firewall)",
            )
            error.stage = "connect"
            raise error from exc
        except httpx.ConnectError as exc:
            error = TargetConnectError(
                f"{where}: cannot connect ({quote_foreign(response_text(exc))})",
                target=ep.target_name,
                hint="check the Graph URL (--graph-url), the national cloud (--cloud), DNS and the firewall",
            )
            error.stage = "connect"
            raise error from exc
        except httpx.TimeoutException as exc:
            error = TargetTimeoutError(
                f"{where}: no answer within {ep.command_timeout:g} s",
                target=ep.target_name,
                hint="Graph may be slow: try again later, or raise the command timeout",
            )
            error.stage = stage
            if unknown_on_timeout:
                error.outcome_unknown = True  # the message was handed over: it may have been sent
            raise error from exc
        except httpx.TransportError as exc:
            error = TargetConnectError(
                f"{where}: the connection failed ({quote_foreign(response_text(exc))})",
                target=ep.target_name,
                hint="try again later",
            )
            error.stage = stage
            if unknown_on_timeout and not isinstance(exc, httpx.ConnectError):
                error.outcome_unknown = True
            raise error from exc
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + ms(started)

    def _failure(self, response: httpx.Response, *, permission: str, action: str, stage: str) -> TargetError:
        ep = self.endpoint
        status = response.status_code
        code, message = graph_error(response)
        said = _said(status, code, message)
        error: TargetError
        if status == 401:
            error = TargetAuthError(
                f"Microsoft Graph refused the access token of account key "
                f"{self.login.key_name if self.login else '?'!r} twice, to {action} ({said})",
                target=ep.target_name,
                hint="check the key's tenant ID and client ID, and that its login URL (--login-url) and the "
                "Graph URL belong to the same national cloud",
            )
        elif status == 403:
            error = GraphPermissionError(
                f"Microsoft Graph refused to {action} for {ep.mailbox}: the app registration lacks the "
                f"application permission {permission} ({said})",
                permission=permission,
                target=ep.target_name,
            )
        elif status == 404:
            error = GraphNotFoundError(
                f"Microsoft Graph: {action}: not found for mailbox {ep.mailbox!r} ({said})",
                target=ep.target_name,
                hint="check the mailbox (its user principal name or object id) and that it is in the "
                "key's tenant",
            )
        elif status == 410:
            error = GraphSyncResetError(
                f"Microsoft Graph: {action}: the stored sync state has expired ({said})",
                target=ep.target_name,
                hint="start again from a new delta query (a new baseline)",
            )
        elif status in _DEFERRED:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if retry_after is None and status == 429:
                retry_after = _RETRY_AFTER_DEFAULT
            later = f"retry after {retry_after} s" if retry_after is not None else "retry later"
            error = TargetDeferredError(
                f"Microsoft Graph {'throttled' if status == 429 else 'could not'} {action} now "
                f"({said}); {later}",
                code=status,
                reply=said,
                target=ep.target_name,
                hint="Graph limits each mailbox (about 30 messages a minute, 10,000 recipients a day): "
                "set a rate limit on the target if this keeps happening"
                if status == 429
                else "the service is busy or down for now; it is tried again later",
                retry_after=retry_after,
            )
        else:
            error = TargetRejectedError(
                f"Microsoft Graph refused to {action} ({said})",
                code=status,
                reply=said,
                target=ep.target_name,
                hint="the message or the request is not what Graph accepts; see Graph's reason",
            )
        error.stage = stage
        return error

    async def _check_policy(self, url: str) -> None:
        """The outbound policy (MAILWRIGHT_TARGET_DENY/ALLOW) holds for Graph as for a mail server."""
        host = urlsplit(url).hostname or self.endpoint.host
        if host in self._checked_hosts:
            return
        import asyncio
        import socket

        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return  # httpx says it cannot resolve it, with the same words as for any failure
        policy = outbound_policy()
        for info in infos:
            address = str(info[4][0]).partition("%")[0]
            rule = policy.refusing_rule(address)
            if rule is not None:
                message, hint = policy.explain(host, address, rule)
                error = TargetPolicyError(message, target=self.endpoint.target_name, hint=hint)
                error.stage = "connect"
                raise error
        self._checked_hosts.add(host)
