"""A Graph mailbox as the `FolderMailbox` the IMAP activities and the mail trigger use.

Graph knows messages by string ids, IMAP by numbers that grow with arrival. So that
read_email, move_email, mark_email, delete_email and the trigger take the same inputs
and give the same outputs as on IMAP, each message gets a UID made from what Graph
keeps for it: `receivedDateTime` in whole seconds × 1,000,000 plus six digits of a
hash of its immutable id (`Prefer: IdType="ImmutableId"`, so a move keeps the id). The
UIDs sort by arrival, stay the same between sessions, and one is found again with a
`$filter` on its second. A folder's UIDVALIDITY is a hash of its id.

Folders: the well-known names (inbox, drafts, sentitems, deleteditems, archive,
junkemail, and the IMAP names INBOX, Sent, Trash, Junk…) or a display-name path
("Projects/2024") under the mailbox's root.

Search: the IMAP criteria read_email and the trigger write. UNSEEN, SINCE and BEFORE
go to Graph as `$filter` (isRead, receivedDateTime); FROM, TO, SUBJECT and HEADER
are matched here on the listed messages, case-insensitively as IMAP does; UID ranges
narrow the `$filter` by time. LARGER is refused (Graph's listing has no size).
Listing pages through `@odata.nextLink`.

Flags: \\Seen is `isRead`, \\Flagged is `flag.flagStatus`. Deleting removes the message
(Graph's DELETE; it goes to Recoverable Items, as an IMAP expunge would go).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shlex
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

from mailwright.domain.capabilities import FolderChanges
from mailwright.errors import TargetError, ValidationError
from mailwright.transport.base import Login
from mailwright.transport.graph.client import GraphClient, GraphEndpoint, GraphNotFoundError

DELTA_PAGE = 50

SECOND = 1_000_000
PAGE = 100
_LIST_FIELDS = "id,receivedDateTime,subject,from,toRecipients,ccRecipients,isRead"
# IMAP's names and Graph's well-known folder names, as the latter.
WELL_KNOWN = {
    "inbox": "inbox",
    "drafts": "drafts",
    "sent": "sentitems",
    "sent items": "sentitems",
    "sentitems": "sentitems",
    "trash": "deleteditems",
    "deleted items": "deleteditems",
    "deleteditems": "deleteditems",
    "archive": "archive",
    "junk": "junkemail",
    "junk email": "junkemail",
    "junkemail": "junkemail",
    "spam": "junkemail",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}


def _hash(text: str, modulo: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % modulo


def received_seconds(value: str) -> int:
    """Graph's `receivedDateTime` ("2024-05-01T10:00:00Z") as POSIX seconds."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def message_uid(message_id: str, received: str) -> int:
    """The UID of a Graph message: its arrival second, then six digits of its id's hash."""
    return received_seconds(received) * SECOND + _hash(message_id, SECOND)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _imap_date(text: str) -> date:
    day, month, year = text.split("-")
    return date(int(year), _MONTHS[month.lower()], int(day))


class Search:
    """IMAP SEARCH criteria as a Graph `$filter` plus what is matched here."""

    def __init__(self, criteria: str) -> None:
        self.filters: list[str] = []
        self.contains: list[tuple[str, str]] = []  # (from|to|subject, text)
        self.headers: list[tuple[str, str]] = []
        self.uid_low: int | None = None
        self.uid_high: int | None = None
        try:
            tokens = shlex.split(criteria, posix=True)
        except ValueError as exc:
            raise ValidationError(f"cannot read the search {criteria!r}: {exc}", field="criteria") from None
        while tokens:
            word = tokens.pop(0).upper()
            if word == "ALL":
                continue
            if word == "UNSEEN":
                self.filters.append("isRead eq false")
            elif word == "SEEN":
                self.filters.append("isRead eq true")
            elif word in ("FROM", "TO", "SUBJECT") and tokens:
                self.contains.append((word.lower(), tokens.pop(0).lower()))
            elif word == "SINCE" and tokens:
                self.filters.append(f"receivedDateTime ge {_imap_date(tokens.pop(0)).isoformat()}T00:00:00Z")
            elif word == "BEFORE" and tokens:
                self.filters.append(f"receivedDateTime lt {_imap_date(tokens.pop(0)).isoformat()}T00:00:00Z")
            elif word == "HEADER" and len(tokens) >= 2:
                self.headers.append((tokens.pop(0).lower(), tokens.pop(0).lower()))
            elif word == "UID" and tokens:
                self._uids(tokens.pop(0))
            else:
                raise ValidationError(
                    f"the search term {word} is not available on Microsoft Graph targets",
                    field="criteria",
                    hint="search by unseen, from, to, subject, since, before or header",
                )

    def _uids(self, spec: str) -> None:
        match = re.fullmatch(r"(\d+)(?::(\d+|\*))?", spec)
        if match is None:
            raise ValidationError(f"UID range {spec!r} is not one Graph targets read", field="criteria")
        self.uid_low = int(match.group(1))
        high = match.group(2)
        self.uid_high = None if high == "*" else int(high or match.group(1))
        self.filters.append(f"receivedDateTime ge {_iso(self.uid_low // SECOND)}")
        if self.uid_high is not None:
            self.filters.append(f"receivedDateTime lt {_iso(self.uid_high // SECOND + 1)}")

    @property
    def needs_headers(self) -> bool:
        return bool(self.headers)

    def matches(self, message: dict[str, Any], uid: int) -> bool:
        # "N:*" keeps what its second lists: IMAP names the newest message even below N, and
        # the trigger takes only what is above its mark.
        if self.uid_high is not None and not (self.uid_low or 0) <= uid <= self.uid_high:
            return False
        for where, text in self.contains:
            if text not in _field_text(message, where).lower():
                return False
        headers: dict[str, str] = {}
        for header in message.get("internetMessageHeaders") or []:
            name = str(header.get("name", "")).lower()
            headers[name] = headers.get(name, "") + " " + str(header.get("value", "")).lower()
        return all(value in headers.get(name, "") for name, value in self.headers)


def _address_text(entry: Any) -> str:
    found = (entry or {}).get("emailAddress") or {}
    return f"{found.get('name') or ''} <{found.get('address') or ''}>"


def _field_text(message: dict[str, Any], where: str) -> str:
    if where == "subject":
        return str(message.get("subject") or "")
    if where == "from":
        return _address_text(message.get("from"))
    return " ".join(
        _address_text(r) for r in [*(message.get("toRecipients") or []), *(message.get("ccRecipients") or [])]
    )


class GraphMailbox:
    """One session on a Graph mailbox; `select` a folder first, as on IMAP."""

    capabilities: set[str]
    uidnext: int | None

    def __init__(self, endpoint: GraphEndpoint, login: Login | None) -> None:
        self.client = GraphClient(endpoint, login, prefer_immutable_ids=True)
        self.endpoint = endpoint
        self.capabilities = {"MOVE"}
        self.uidnext = None
        self._folder: dict[str, Any] | None = None
        self._ids: dict[int, str] = {}  # UID → message id, in the selected folder
        self._folders: dict[str, dict[str, Any]] = {}

    async def __aenter__(self) -> GraphMailbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def open(self) -> None:
        await self.client.token()

    # --- folders --------------------------------------------------------------------

    async def _get(self, path: str, *, permission: str = "Mail.Read", action: str) -> dict[str, Any]:
        response = await self.client.request("GET", path, permission=permission, action=action)
        body = response.json()
        return body if isinstance(body, dict) else {}

    async def _find_folder(self, name: str) -> dict[str, Any] | None:
        key = name.strip().strip("/")
        cached = self._folders.get(key.lower())
        if cached is not None:
            return cached
        known = WELL_KNOWN.get(key.lower())
        ep = self.endpoint
        found: dict[str, Any] | None = None
        if known is not None:
            try:
                found = await self._get(ep.user_path(f"/mailFolders/{known}"), action=f"open folder {name!r}")
            except GraphNotFoundError:
                found = None
        else:
            parent = ep.user_path("/mailFolders")
            for part in key.split("/"):
                condition = quote("displayName eq '" + part.replace("'", "''") + "'")
                listing = await self._get(
                    f"{parent}?$filter={condition}&$select=id,displayName,totalItemCount",
                    action=f"find folder {name!r}",
                )
                matches = listing.get("value") or []
                if not matches:
                    return None
                found = matches[0]
                parent = ep.user_path(f"/mailFolders/{found['id']}/childFolders")
        if found is not None:
            self._folders[key.lower()] = found
        return found

    async def _folder_or_fail(self, name: str) -> dict[str, Any]:
        found = await self._find_folder(name)
        if found is None:
            raise ValidationError(
                f"{self.endpoint.mailbox} has no folder {name!r}",
                field="folder",
                hint="use a well-known name (inbox, sentitems, archive…) or the folder's display name path",
            )
        return found

    async def select(self, folder: str = "INBOX", *, readonly: bool = False) -> tuple[int, int]:
        found = await self._folder_or_fail(folder)
        self._folder = found
        self._ids = {}
        newest = await self._get(
            self._messages_path(found)
            + "?$top=1&$orderby=receivedDateTime%20desc&$select=id,receivedDateTime",
            action=f"read folder {folder!r}",
        )
        top = newest.get("value") or []
        self.uidnext = (received_seconds(top[0]["receivedDateTime"]) + 1) * SECOND if top else 1
        count = found.get("totalItemCount")
        return _hash(str(found["id"]), 2**31 - 1) + 1, int(count) if isinstance(count, int) else len(top)

    async def create_folder(self, name: str) -> bool:
        if await self._find_folder(name) is not None:
            return False
        parent_path, _, leaf = name.strip().strip("/").rpartition("/")
        if parent_path:
            await self.create_folder(parent_path)  # the missing parents too, as an IMAP server does
        parent = await self._folder_or_fail(parent_path) if parent_path else None
        where = f"/mailFolders/{parent['id']}/childFolders" if parent else "/mailFolders"
        response = await self.client.request(
            "POST",
            self.endpoint.user_path(where),
            permission="Mail.ReadWrite",
            action=f"create folder {name!r}",
            json_body={"displayName": leaf},
        )
        self._folders[name.strip().strip("/").lower()] = response.json()
        return True

    # --- messages -------------------------------------------------------------------

    def _messages_path(self, folder: dict[str, Any]) -> str:
        return self.endpoint.user_path(f"/mailFolders/{folder['id']}/messages")

    def _selected(self) -> dict[str, Any]:
        if self._folder is None:
            raise TargetError("no folder is selected", target=self.endpoint.target_name)
        return self._folder

    async def _list(self, search: Search) -> list[tuple[int, dict[str, Any]]]:
        fields = _LIST_FIELDS + (",internetMessageHeaders" if search.needs_headers else "")
        query = f"$top={PAGE}&$select={fields}"
        if search.filters:
            query += "&$filter=" + quote(" and ".join(search.filters))
        url: str | None = f"{self._messages_path(self._selected())}?{query}"
        out: list[tuple[int, dict[str, Any]]] = []
        while url:
            page = await self._get(url, action="list messages")
            for message in page.get("value") or []:
                uid = message_uid(str(message["id"]), str(message["receivedDateTime"]))
                self._ids[uid] = str(message["id"])
                out.append((uid, message))
            link = page.get("@odata.nextLink")
            url = str(link) if link else None
        return out

    async def search_uids(self, criteria: str = "ALL") -> list[int]:
        search = Search(criteria)
        listed = await self._list(search)
        return sorted(uid for uid, message in listed if search.matches(message, uid))

    async def _ids_of(self, uids: Iterable[int]) -> dict[int, str]:
        """The message ids of `uids` in the selected folder (looked up by their second when unknown)."""
        wanted = sorted(set(uids))
        missing = [u for u in wanted if u not in self._ids]
        for second in sorted({u // SECOND for u in missing}):
            await self._list(Search(f"UID {second * SECOND}:{second * SECOND + SECOND - 1}"))
        return {u: self._ids[u] for u in wanted if u in self._ids}

    async def fetch_rfc822(self, uids: Iterable[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for uid, message_id in (await self._ids_of(uids)).items():
            try:
                response = await self.client.request(
                    "GET",
                    self.endpoint.user_path(f"/messages/{quote(message_id, safe='')}/$value"),
                    permission="Mail.Read",
                    action="read a message",
                )
            except GraphNotFoundError:
                continue  # gone meanwhile, as an expunged UID is on IMAP
            out[uid] = response.content
        return out

    async def _patch(self, uids: Iterable[int], body: dict[str, Any]) -> None:
        for message_id in (await self._ids_of(uids)).values():
            await self.client.request(
                "PATCH",
                self.endpoint.user_path(f"/messages/{quote(message_id, safe='')}"),
                permission="Mail.ReadWrite",
                action="mark a message",
                json_body=body,
            )

    @staticmethod
    def _flag_body(flags: Iterable[str], on: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for flag in flags:
            if flag.lower() == "\\seen":
                body["isRead"] = on
            elif flag.lower() == "\\flagged":
                body["flag"] = {"flagStatus": "flagged" if on else "notFlagged"}
            else:
                raise ValidationError(
                    f"flag {flag} is not available on Microsoft Graph targets", field="flags"
                )
        return body

    async def add_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None:
        await self._patch(uids, self._flag_body(flags, True))

    async def remove_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None:
        await self._patch(uids, self._flag_body(flags, False))

    async def move(self, uids: Iterable[int], folder: str) -> None:
        target = await self._folder_or_fail(folder)
        for uid, message_id in (await self._ids_of(uids)).items():
            await self.client.request(
                "POST",
                self.endpoint.user_path(f"/messages/{quote(message_id, safe='')}/move"),
                permission="Mail.ReadWrite",
                action=f"move a message to {folder!r}",
                json_body={"destinationId": target["id"]},
            )
            self._ids.pop(uid, None)

    async def delete(self, uids: Iterable[int]) -> None:
        for uid, message_id in (await self._ids_of(uids)).items():
            with contextlib.suppress(GraphNotFoundError):  # already gone
                await self.client.request(
                    "DELETE",
                    self.endpoint.user_path(f"/messages/{quote(message_id, safe='')}"),
                    permission="Mail.ReadWrite",
                    action="delete a message",
                )
            self._ids.pop(uid, None)

    async def changes(self, folder: str, cursor: str | None = None) -> FolderChanges:
        """The folder's changes since `cursor`, a delta link (a delta query, paged through `@odata.nextLink`).

        The `ChangeFeed` the email trigger follows. Without a link Graph lists every message
        there now: the baseline. A message moved into the folder comes as a change, as on
        IMAP (it gets a new UID there), which a mark by UID alone would miss; so does one
        whose properties changed (read, flagged): Graph does not tell the two apart. The key
        is the immutable id. An expired link raises `GraphSyncResetError` (a
        `ChangesExpiredError`): start again without one.
        """
        found = await self._folder_or_fail(folder)
        url: str | None = cursor or (
            self._messages_path(found) + "/delta?$select=id,receivedDateTime,subject,from,isRead"
        )
        changed: list[tuple[int, str]] = []
        removed: list[str] = []
        while url:
            response = await self.client.request(
                "GET",
                url,
                permission="Mail.Read",
                action=f"look for changes in folder {folder!r}",
                headers={"Prefer": f"odata.maxpagesize={DELTA_PAGE}"},
            )
            page = response.json()
            for item in page.get("value") or []:
                if "@removed" in item:
                    removed.append(str(item["id"]))
                elif item.get("receivedDateTime"):
                    uid = message_uid(str(item["id"]), str(item["receivedDateTime"]))
                    self._ids[uid] = str(item["id"])
                    changed.append((uid, str(item["id"])))
            final = page.get("@odata.deltaLink")
            if final:
                return FolderChanges(changed=sorted(changed), removed=removed, cursor=str(final))
            link = page.get("@odata.nextLink")
            url = str(link) if link else None
        raise TargetError(
            "Microsoft Graph ended a delta query without a delta link", target=self.endpoint.target_name
        )

    async def idle(self, *, timeout: float) -> bool:
        """Graph has no IDLE (and `capabilities` does not offer it): the trigger polls."""
        return False
