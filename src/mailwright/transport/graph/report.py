"""The connection test of a Graph target: the token, the mailbox, and each permission its use needs.

Each check is a step of the report, with the fix when it fails:

- `token`: the account key's access token (the key's own errors say what to fix);
- `mailbox`: `GET /users/{mailbox}` (User.Read.All): the mailbox exists in the tenant;
- `Mail.Send`: `POST /users/{mailbox}/sendMail` with an empty message. Graph checks the
  permission before the message, so 403 means the permission is missing and 400 (no
  recipients) that it is granted; nothing is sent;
- `Mail.Read`: `GET /users/{mailbox}/mailFolders/inbox` (reading, the mail trigger);
- `Mail.ReadWrite`: `PATCH` of a message id that does not exist: 403 without the
  permission, 404 with it; nothing changes. Needed for attachments of 3 MB or more
  (drafts) and for moving, marking and deleting mail.

Without a token or Mail.Send the test fails; a missing reading permission, or
User.Read.All, is a warning (sending works without them).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from mailwright.errors import TargetError, TargetRejectedError
from mailwright.transport.base import Login, ms
from mailwright.transport.graph.client import (
    PROTOCOL,
    GraphClient,
    GraphEndpoint,
    GraphNotFoundError,
    GraphPermissionError,
)

_ABSENT_ID = "AAMkAGNvbm5lY3Rpb24tdGVzdC1ub3QtYS1tZXNzYWdl"  # a well-formed id no message has


async def _step(
    client: GraphClient,
    steps: list[dict[str, Any]],
    name: str,
    method: str,
    path: str,
    *,
    permission: str,
    action: str,
    json_body: Any = None,
    granted_statuses: tuple[type[TargetError], ...] = (),
) -> tuple[httpx.Response | None, TargetError | None]:
    """Run one check; (the answer, None) when it passed, (None, the error) when it did not."""
    started = time.perf_counter()
    try:
        response = await client.request(
            method, path, permission=permission, action=action, json_body=json_body, stage=name
        )
    except TargetError as exc:
        if isinstance(exc, granted_statuses) and not isinstance(exc, GraphPermissionError):
            steps.append({"name": name, "ok": True, "ms": ms(started)})
            return None, None
        steps.append({"name": name, "ok": False, "ms": ms(started)})
        return None, exc
    steps.append({"name": name, "ok": True, "ms": ms(started)})
    return response, None


async def connection_report(
    endpoint: GraphEndpoint, login: Login | None, *, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Any]:
    """The report dictionary (the shape of `transport.report.build_report`) for one Graph target."""
    started = time.perf_counter()
    ep = endpoint
    steps: list[dict[str, Any]] = []
    warnings: list[str] = []
    permissions: dict[str, bool | None] = {
        "User.Read.All": None,
        "Mail.Send": None,
        "Mail.Read": None,
        "Mail.ReadWrite": None,
    }
    error: TargetError | None = None
    authenticated_as: str | None = None
    mailbox: dict[str, Any] = {}
    async with GraphClient(ep, login, transport=transport) as client:
        token_started = time.perf_counter()
        try:
            await client.token()
            steps.append({"name": "token", "ok": True, "ms": ms(token_started)})
        except TargetError as exc:
            steps.append({"name": "token", "ok": False, "ms": ms(token_started)})
            error = exc
        if error is None:
            user = ep.user_path("?$select=id,userPrincipalName,mail,displayName")
            answer, failed = await _step(
                client, steps, "mailbox", "GET", user,
                permission="User.Read.All", action="look up the mailbox",
            )  # fmt: skip
            if answer is not None:
                permissions["User.Read.All"] = True
                body = answer.json()
                mailbox = {k: body.get(k) for k in ("id", "userPrincipalName", "mail", "displayName")}
                authenticated_as = str(body.get("userPrincipalName") or body.get("mail") or ep.mailbox)
            elif isinstance(failed, GraphPermissionError):
                permissions["User.Read.All"] = False
                warnings.append(
                    f"the mailbox's existence was not checked: {failed.message} ({failed.hint}); "
                    "sending does not need this permission"
                )
            else:
                error = failed
        if error is None:
            _, failed = await _step(
                client, steps, "Mail.Send", "POST", ep.user_path("/sendMail"),
                permission="Mail.Send", action="send mail",
                json_body={"message": {"subject": "", "toRecipients": []}, "saveToSentItems": False},
                granted_statuses=(TargetRejectedError,),
            )  # fmt: skip
            permissions["Mail.Send"] = failed is None
            error = failed
        if error is None:
            for name, method, path, body, why in (
                ("Mail.Read", "GET", "/mailFolders/inbox?$select=id", None, "reading mail and mail triggers"),
                (
                    "Mail.ReadWrite",
                    "PATCH",
                    f"/messages/{_ABSENT_ID}",
                    {},
                    "attachments of 3 MB or more, moving, marking and deleting mail",
                ),
            ):
                _, failed = await _step(
                    client, steps, name, method, ep.user_path(path), permission=name,
                    action=f"check {name}", json_body=body,
                    granted_statuses=(GraphNotFoundError, TargetRejectedError),
                )  # fmt: skip
                permissions[name] = failed is None
                if isinstance(failed, GraphPermissionError):
                    warnings.append(f"{name} is not granted: {why} will fail ({failed.hint})")
                elif failed is not None:
                    error = failed
                    break
    return {
        "ok": error is None,
        "target": ep.target_name,
        "server": ep.host,
        "port": ep.port,
        "security": ep.security,
        "protocol": PROTOCOL,
        "account_key": login.key_name if login else None,
        "steps": steps,
        "greeting": "",
        "capabilities": {"graph_url": ep.graph_url, "mailbox": mailbox, "permissions": permissions},
        "tls": None,
        "authenticated_as": authenticated_as,
        "auth_mechanism": "OAuth2 bearer token" if steps and steps[0]["ok"] else None,
        "warnings": warnings,
        "error": error.details() if error is not None else None,
        "total_ms": ms(started),
    }
