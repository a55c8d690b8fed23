"""A Microsoft Graph stand-in for tests, written from Microsoft's published Graph v1.0 API contracts.

Microsoft's servers cannot be reached from the tests, so this small HTTP server answers
the calls Mailwright makes the way the documentation says Graph does (request and
response shapes, status codes, error bodies `{"error": {"code", "message"}}`):

- every call under `/v1.0` needs `Authorization: Bearer <token>`; the token is checked
  by a validator (a mapping token → application roles, or a function), 401
  `InvalidAuthenticationToken` otherwise, 403 `ErrorAccessDenied` when the role the
  call needs is missing (Mail.ReadWrite also grants Mail.Read);
- `GET /users/{id}` (User.Read.All); `POST /users/{id}/sendMail` (Mail.Send, 202; 400
  `ErrorInvalidRecipients` without recipients; 413 over 4 MB);
- drafts: `POST /users/{id}/messages` (201), `POST .../messages/{id}/attachments`
  (under 3 MB), `POST .../attachments/createUploadSession` (201 with an `uploadUrl`
  that must be called without a bearer token, chunks of at most 4 MB in order with
  `Content-Range`: 200 with `nextExpectedRanges`, 201 at the end), `POST
  .../messages/{id}/send` (202), `PATCH`/`DELETE .../messages/{id}`;
- `GET .../mailFolders/{id or well-known name}`;
- delta queries, `GET .../mailFolders/{id}/messages/delta`: as Graph, a message that
  arrived, was moved in or was changed (its `changeKey`, new on each `PATCH`) since the
  delta token comes in the same way, one that left as `@removed`;
- `throttle(n, status=429, retry_after="2")`: the next n calls answer that status with
  `Retry-After`.

It records every request (method, path, query, JSON body; never the token) in
`requests`, and each message Graph would have sent in `sent`, so tests assert on the
JSON Graph received. It runs in a thread on 127.0.0.1 (plain http).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

__all__ = ["ALL_ROLES", "GraphServer", "Recorded"]

MAX_REQUEST = 4 * 1024 * 1024
MAX_ATTACHMENT_POST = 3 * 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
WELL_KNOWN = {
    "inbox": "Inbox",
    "drafts": "Drafts",
    "sentitems": "Sent Items",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
    "junkemail": "Junk Email",
}
ALL_ROLES = frozenset({"User.Read.All", "Mail.Send", "Mail.Read", "Mail.ReadWrite"})

Validator = Callable[[str], "set[str] | frozenset[str] | None"]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    size: int
    authorized: bool  # carried a bearer token (whatever its value)
    headers: dict[str, str] = field(default_factory=dict)  # Content-Range and the like, never Authorization


@dataclass
class _Upload:
    user: str
    message_id: str
    name: str
    size: int
    content_type: str
    received: bytearray = field(default_factory=bytearray)


class _Failure(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class GraphServer:
    """The stand-in; use as a context manager. `users`: the mailboxes (user principal names)."""

    def __init__(
        self,
        *,
        tokens: Mapping[str, set[str] | frozenset[str]] | Validator | None = None,
        users: list[str] | None = None,
    ) -> None:
        self._validator: Validator = (
            tokens if callable(tokens) else (dict(tokens) if tokens is not None else {}).get
        )
        self.requests: list[Recorded] = []
        self.sent: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._throttle: list[tuple[int, str | None]] = []
        self._uploads: dict[str, _Upload] = {}
        self._delta_pages: dict[str, tuple[list[dict[str, Any]], dict[str, str]]] = {}
        self._delta_tokens: dict[str, dict[str, str]] = {}  # token → {message id: changeKey}
        self.users: dict[str, dict[str, Any]] = {}
        # user → folder well-known name or id → {"id", "displayName", "messages": {id: message}}
        self.folders: dict[str, dict[str, dict[str, Any]]] = {}
        for user in users or ["alice@contoso.example"]:
            self.add_user(user)
        handler = type("Handler", (_Handler,), {"graph": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="graph-stand-in", daemon=True)

    # --- set-up -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> GraphServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def add_user(self, upn: str) -> None:
        uid = f"00000000-0000-0000-0000-{next(self._ids):012d}"
        self.users[upn.lower()] = {"id": uid, "userPrincipalName": upn, "mail": upn, "displayName": upn}
        self.folders[uid] = {
            name: {"id": f"folder-{name}-{uid[-4:]}", "displayName": shown, "parentId": None, "messages": {}}
            for name, shown in WELL_KNOWN.items()
        }

    def deliver(
        self,
        user: str,
        raw: bytes,
        *,
        folder: str = "inbox",
        received: datetime | None = None,
        is_read: bool = False,
    ) -> str:
        """Put a message (RFC 5322 bytes) in `folder`, as mail arriving; returns its id."""
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)

        def people(name: str) -> list[dict[str, Any]]:
            header = parsed[name]
            return [
                {"emailAddress": {"name": a.display_name, "address": a.addr_spec}}
                for a in getattr(header, "addresses", ())
            ]

        when = (received or datetime.now(UTC)).astimezone(UTC)
        message_id = self._new_id()
        message = {
            "id": message_id,
            "receivedDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "subject": str(parsed.get("Subject", "")),
            "from": next(iter(people("From")), None),
            "toRecipients": people("To"),
            "ccRecipients": people("Cc"),
            "isRead": is_read,
            "isDraft": False,
            "internetMessageId": str(parsed.get("Message-ID", "")),
            "internetMessageHeaders": [{"name": k, "value": str(v)} for k, v in parsed.items()],
            "flag": {"flagStatus": "notFlagged"},
            "changeKey": self._new_id(),
            "attachments": [],
            "mime": raw,
        }
        with self._lock:
            self.folder(user, folder)["messages"][message_id] = message
        return message_id

    def throttle(self, times: int = 1, *, status: int = 429, retry_after: str | None = "2") -> None:
        """The next `times` calls answer `status` (429 or 503) with `Retry-After`."""
        with self._lock:
            self._throttle.extend([(status, retry_after)] * times)

    def requests_to(self, method: str, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def folder(self, user: str, name: str) -> dict[str, Any]:
        """A folder by well-known name, id or display name."""
        folders = self.folders[self.users[user.lower()]["id"]]
        found = folders.get(name) or next(
            (f for f in folders.values() if name in (f["id"], f["displayName"])), None
        )
        assert found is not None, f"no folder {name!r}"
        return found

    # --- the API ------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        data: Any = None
        if body and "json" in headers.get("content-type", ""):
            try:
                data = json.loads(body)
            except ValueError:
                return 400, _error("BadRequest", "Unable to read JSON request payload."), {}
        auth = headers.get("authorization", "")
        kept = {k: v for k, v in headers.items() if k in ("content-range", "content-type")}
        with self._lock:
            self.requests.append(Recorded(method, path, query, data, len(body), bool(auth), kept))
            throttled = self._throttle.pop(0) if self._throttle else None
        if throttled is not None:
            status, retry_after = throttled
            extra = {"Retry-After": retry_after} if retry_after is not None else {}
            code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
            return status, _error(code, "Application is over its MailboxConcurrency limit."), extra
        try:
            if path.startswith("/upload/"):
                return self._upload(path.removeprefix("/upload/"), headers, body, auth)
            if not path.startswith("/v1.0/"):
                raise _Failure(404, "BadRequest", f"Resource not found for the segment '{path}'.")
            roles = self._roles(auth)
            return self._route(method, path.removeprefix("/v1.0"), query, data, body, roles, headers)
        except _Failure as failure:
            return failure.status, _error(failure.code, failure.message), failure.headers

    def _roles(self, auth: str) -> frozenset[str]:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Failure(401, "InvalidAuthenticationToken", "Access token is empty.")
        roles = self._validator(token)
        if roles is None:
            raise _Failure(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return frozenset(roles)

    def _need(self, roles: frozenset[str], role: str) -> None:
        if role in roles or (role == "Mail.Read" and "Mail.ReadWrite" in roles):
            return
        raise _Failure(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

    def _user(self, ref: str) -> dict[str, Any]:
        found = self.users.get(ref.lower()) or next((u for u in self.users.values() if u["id"] == ref), None)
        if found is None:
            raise _Failure(404, "ErrorInvalidUser", f"The requested user '{ref}' is invalid.")
        return found

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        data: Any,
        body: bytes,
        roles: frozenset[str],
        headers: Mapping[str, str],
    ) -> tuple[int, Any, dict[str, str]]:
        match = re.fullmatch(r"/users/([^/]+)(/.*)?", path)
        if match is None:
            raise _Failure(400, "BadRequest", f"Resource not found for the segment '{path}'.")
        ref, rest = match.group(1), match.group(2) or ""
        if rest == "":
            self._need(roles, "User.Read.All")
            return 200, self._user(ref), {}
        user = self._user(ref)
        folders = self.folders[user["id"]]
        if method == "POST" and rest == "/sendMail":
            self._need(roles, "Mail.Send")
            if len(body) > MAX_REQUEST:
                raise _Failure(413, "RequestEntityTooLarge", "The request is larger than 4 MB.")
            message = (data or {}).get("message") or {}
            self._check_recipients(message)
            with self._lock:
                self.sent.append({"user": user["userPrincipalName"], "via": "sendMail", **(data or {})})
                if (data or {}).get("saveToSentItems", True):
                    copy = {**message, "id": self._new_id(), "isDraft": False}
                    folders["sentitems"]["messages"][copy["id"]] = copy
            return 202, None, {}
        if method == "POST" and rest == "/messages":
            self._need(roles, "Mail.ReadWrite")
            draft = {
                **(data or {}),
                "id": self._new_id(),
                "isDraft": True,
                "attachments": list((data or {}).get("attachments", [])),
            }
            draft.setdefault("internetMessageId", f"<{draft['id']}@stand-in.example>")
            with self._lock:
                folders["drafts"]["messages"][draft["id"]] = draft
            return 201, {k: v for k, v in draft.items() if k != "attachments"}, {}
        match = re.fullmatch(r"/messages/([^/]+)(/.*)?", rest)
        if match is not None:
            return self._message(
                method, user, folders, match.group(1), match.group(2) or "", data, body, roles
            )
        if rest == "/mailFolders" or rest.endswith("/childFolders"):
            parent = None
            if rest != "/mailFolders":
                parent = self._folder(
                    folders, rest.removeprefix("/mailFolders/").removesuffix("/childFolders")
                )["id"]
            if method == "GET":
                self._need(roles, "Mail.Read")
                wanted = re.fullmatch(r"displayName eq '((?:[^']|'')*)'", query.get("$filter", ""))
                found = [
                    _folder_json(f)
                    for f in folders.values()
                    if f["parentId"] == parent
                    and (wanted is None or f["displayName"] == wanted.group(1).replace("''", "'"))
                ]
                return 200, {"value": found}, {}
            if method == "POST":
                self._need(roles, "Mail.ReadWrite")
                name = str((data or {}).get("displayName") or "")
                if not name or any(
                    f["parentId"] == parent and f["displayName"] == name for f in folders.values()
                ):
                    raise _Failure(
                        409, "ErrorFolderExists", "A folder with the specified name already exists."
                    )
                new_id = self._new_id()
                folder: dict[str, Any] = {
                    "id": new_id,
                    "displayName": name,
                    "parentId": parent,
                    "messages": {},
                }
                with self._lock:
                    folders[new_id] = folder
                return 201, _folder_json(folder), {}
        match = re.fullmatch(r"/mailFolders/([^/]+)/messages/delta", rest)
        if match is not None and method == "GET":
            self._need(roles, "Mail.Read")
            return 200, self._delta(self._folder(folders, match.group(1)), path, query, headers), {}
        match = re.fullmatch(r"/mailFolders/([^/]+)(/messages)?", rest)
        if match is not None and method == "GET":
            self._need(roles, "Mail.Read")
            folder = self._folder(folders, match.group(1))
            if match.group(2) is None:
                return 200, _folder_json(folder), {}
            return 200, self._listing(folder, path, query), {}
        raise _Failure(400, "BadRequest", f"Resource not found for the segment '{rest}'.")

    def _folder(self, folders: dict[str, dict[str, Any]], ref: str) -> dict[str, Any]:
        found = folders.get(ref.lower()) or next((f for f in folders.values() if f["id"] == ref), None)
        if found is None:
            raise _Failure(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return found

    def _find(
        self, folders: dict[str, dict[str, Any]], message_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        for folder in folders.values():
            if message_id in folder["messages"]:
                return folder, folder["messages"][message_id]
        raise _Failure(404, "ErrorItemNotFound", "The specified object was not found in the store.")

    def _message(
        self,
        method: str,
        user: dict[str, Any],
        folders: dict[str, dict[str, Any]],
        message_id: str,
        rest: str,
        data: Any,
        body: bytes,
        roles: frozenset[str],
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and rest == "/$value":
            self._need(roles, "Mail.Read")
            _, message = self._find(folders, message_id)
            return 200, bytes(message.get("mime") or b""), {"Content-Type": "message/rfc822"}
        if method == "POST" and rest == "/move":
            self._need(roles, "Mail.ReadWrite")
            folder, message = self._find(folders, message_id)
            destination = self._folder(folders, str((data or {}).get("destinationId") or ""))
            with self._lock:
                del folder["messages"][message_id]
                destination["messages"][message_id] = message  # an immutable id survives the move
            return 201, _public(message), {}
        if method == "PATCH" and rest == "":
            self._need(roles, "Mail.ReadWrite")
            _, message = self._find(folders, message_id)
            with self._lock:
                message.update(data or {})
                message["changeKey"] = self._new_id()
            return 200, _public(message), {}
        if method == "DELETE" and rest == "":
            self._need(roles, "Mail.ReadWrite")
            folder, _ = self._find(folders, message_id)
            with self._lock:
                del folder["messages"][message_id]
            return 204, None, {}
        if method == "POST" and rest == "/attachments":
            self._need(roles, "Mail.ReadWrite")
            _, message = self._find(folders, message_id)
            if len(body) > MAX_ATTACHMENT_POST:
                raise _Failure(
                    413,
                    "ErrorRequestEntityTooLarge",
                    "Use an upload session for attachments of 3 MB or more.",
                )
            with self._lock:
                message["attachments"].append(data)
            return 201, {**(data or {}), "id": self._new_id()}, {}
        if method == "POST" and rest == "/attachments/createUploadSession":
            self._need(roles, "Mail.ReadWrite")
            self._find(folders, message_id)
            item = (data or {}).get("AttachmentItem") or {}
            if item.get("attachmentType") != "file" or not isinstance(item.get("size"), int):
                raise _Failure(
                    400, "ErrorInvalidRequest", "AttachmentItem needs attachmentType file and a size."
                )
            session = base64.urlsafe_b64encode(self._new_id().encode()).decode().rstrip("=")
            with self._lock:
                self._uploads[session] = _Upload(
                    user=user["id"],
                    message_id=message_id,
                    name=str(item.get("name")),
                    size=item["size"],
                    content_type=str(item.get("contentType") or "application/octet-stream"),
                )
            return (
                201,
                {
                    "uploadUrl": f"{self.base_url}/upload/{session}?authtoken=stand-in",
                    "expirationDateTime": "2099-01-01T00:00:00Z",
                    "nextExpectedRanges": ["0-"],
                },
                {},
            )
        if method == "POST" and rest == "/send":
            self._need(roles, "Mail.Send")
            folder, message = self._find(folders, message_id)
            self._check_recipients(message)
            with self._lock:
                del folder["messages"][message_id]
                sent = {**message, "isDraft": False}
                self.sent.append({"user": user["userPrincipalName"], "via": "draft", "message": sent})
                keep = not any(
                    p.get("id") == "Boolean 0x0E01" and str(p.get("value")).lower() == "true"
                    for p in message.get("singleValueExtendedProperties", [])
                )
                if keep:
                    folders["sentitems"]["messages"][message_id] = sent
            return 202, None, {}
        raise _Failure(400, "BadRequest", f"Resource not found for the segment '{rest}'.")

    def _upload(
        self, session: str, headers: Mapping[str, str], body: bytes, auth: str
    ) -> tuple[int, Any, dict[str, str]]:
        if auth:
            # Graph documents it: the upload URL is pre-authenticated; a bearer token makes it fail.
            raise _Failure(
                401, "InvalidAuthenticationToken", "Do not send an Authorization header to an upload URL."
            )
        upload = self._uploads.get(session)
        if upload is None:
            raise _Failure(404, "ErrorItemNotFound", "The upload session does not exist or has expired.")
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers.get("content-range", ""))
        if match is None:
            raise _Failure(400, "InvalidContentRange", "Content-Range is missing or malformed.")
        start, end, total = (int(g) for g in match.groups())
        if total != upload.size or start != len(upload.received) or end - start + 1 != len(body):
            raise _Failure(416, "InvalidRange", f"Expected the range starting at {len(upload.received)}.")
        if len(body) > MAX_CHUNK:
            raise _Failure(413, "RequestEntityTooLarge", "Each chunk must be smaller than 4 MB.")
        with self._lock:
            upload.received.extend(body)
            if len(upload.received) < upload.size:
                return (
                    200,
                    {
                        "expirationDateTime": "2099-01-01T00:00:00Z",
                        "nextExpectedRanges": [f"{len(upload.received)}-"],
                    },
                    {},
                )
            del self._uploads[session]
            _, message = self._find(self.folders[upload.user], upload.message_id)
            message["attachments"].append(
                {
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": upload.name,
                    "contentType": upload.content_type,
                    "size": upload.size,
                    "contentBytes": base64.b64encode(bytes(upload.received)).decode("ascii"),
                }
            )
        return 201, None, {"Location": f"{self.base_url}/v1.0/attachments/{session}"}

    def _delta(
        self, folder: dict[str, Any], path: str, query: dict[str, str], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """A delta query: every message at first, then what arrived, changed and left since the token.

        `$deltatoken` names a snapshot of the folder's ids and change keys; pages
        (`Prefer: odata.maxpagesize`) follow `$skiptoken`; the last page carries
        `@odata.deltaLink`. `expire_delta_links()` makes every stored token answer 410 Gone
        (syncStateNotFound), as an old one does.
        """
        size_match = re.search(r"odata\.maxpagesize=(\d+)", headers.get("prefer", ""))
        size = int(size_match.group(1)) if size_match else 10
        base = f"{self.base_url}/v1.0{path}"
        with self._lock:
            if "$skiptoken" in query:
                key, _, offset_text = query["$skiptoken"].partition(".")
                changes, snapshot = self._delta_pages[key]
                offset = int(offset_text)
            else:
                current = dict(folder["messages"])
                if "$deltatoken" in query:
                    before = self._delta_tokens.get(query["$deltatoken"])
                    if before is None:
                        raise _Failure(410, "SyncStateNotFound", "The sync state generation is not found.")
                    changed = [
                        _public(m) for i, m in current.items() if before.get(i) != str(m.get("changeKey"))
                    ]
                    gone = [{"id": i, "@removed": {"reason": "deleted"}} for i in before if i not in current]
                    changes = changed + gone
                else:
                    changes = [_public(m) for m in current.values()]
                snapshot = {i: str(m.get("changeKey")) for i, m in current.items()}
                key = self._new_id()
                self._delta_pages[key] = (changes, snapshot)
                offset = 0
            page = changes[offset : offset + size]
            if offset + size < len(changes):
                return {"value": page, "@odata.nextLink": f"{base}?$skiptoken={key}.{offset + size}"}
            token = self._new_id()
            self._delta_tokens[token] = snapshot
            return {"value": page, "@odata.deltaLink": f"{base}?$deltatoken={token}"}

    def expire_delta_links(self) -> None:
        with self._lock:
            self._delta_tokens.clear()

    def _listing(self, folder: dict[str, Any], path: str, query: dict[str, str]) -> dict[str, Any]:
        """`$filter` (isRead, receivedDateTime; "and"), `$orderby=receivedDateTime desc`, `$select`,
        `$top` and `$skip`, with `@odata.nextLink` while more remain."""
        messages = list(folder["messages"].values())
        for condition in filter(None, re.split(r"\s+and\s+", query.get("$filter", ""))):
            match = re.fullmatch(r"(isRead|receivedDateTime) (eq|ge|lt) (\S+)", condition.strip())
            if match is None:
                raise _Failure(
                    400, "ErrorInvalidUrlQueryFilter", f"The filter {condition!r} is not supported."
                )
            name, op, value = match.groups()
            if name == "isRead":
                messages = [m for m in messages if m.get("isRead", False) == (value == "true")]
            else:
                when = value.replace("Z", "")
                if op == "ge":
                    messages = [m for m in messages if m["receivedDateTime"].replace("Z", "") >= when]
                else:
                    messages = [m for m in messages if m["receivedDateTime"].replace("Z", "") < when]
        newest_first = query.get("$orderby", "").replace("%20", " ") == "receivedDateTime desc"
        messages.sort(key=lambda m: (m["receivedDateTime"], m["id"]), reverse=newest_first)
        top = int(query.get("$top", "10"))
        skip = int(query.get("$skip", "0"))
        page = messages[skip : skip + top]
        fields = [f for f in query.get("$select", "").split(",") if f]
        out: dict[str, Any] = {
            "value": [
                {k: v for k, v in _public(m).items() if not fields or k in fields or k == "id"} for m in page
            ]
        }
        if skip + top < len(messages):
            rest = {**query, "$skip": str(skip + top)}
            out["@odata.nextLink"] = f"{self.base_url}/v1.0{path}?" + urlencode(rest, quote_via=quote)
        return out

    @staticmethod
    def _check_recipients(message: dict[str, Any]) -> None:
        everyone = [
            *message.get("toRecipients", []),
            *message.get("ccRecipients", []),
            *message.get("bccRecipients", []),
        ]
        if not everyone or not all((r.get("emailAddress") or {}).get("address") for r in everyone):
            raise _Failure(400, "ErrorInvalidRecipients", "At least one recipient is not valid.")

    def _new_id(self) -> str:
        return f"AAMkAG{next(self._ids):08d}"

    def attachments_of(self, sent: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
        """(name, content) of each attachment of a message in `sent`."""
        for attachment in sent["message"].get("attachments", []):
            yield attachment["name"], base64.b64decode(attachment["contentBytes"])


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ("mime", "attachments")}


def _folder_json(folder: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": folder["id"],
        "displayName": folder["displayName"],
        "parentFolderId": folder["parentId"],
        "totalItemCount": len(folder["messages"]),
        "unreadItemCount": sum(not m.get("isRead") for m in folder["messages"].values()),
    }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "innerError": {"request-id": "stand-in"}}}


class _Handler(BaseHTTPRequestHandler):
    graph: GraphServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, data, extra = self.graph.handle(self.command, self.path, headers, body)
        if isinstance(data, bytes):
            payload = data
        else:
            payload = b"" if data is None else json.dumps(data).encode()
            if payload:
                extra = {"Content-Type": "application/json", **extra}
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
