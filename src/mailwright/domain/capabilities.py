"""What a target can do, as protocols: send mail (`MailSender`), or hold mail (`Mailbox`).

A target type offers its capabilities as factories (`TargetType.sender`,
`TargetType.mailbox`); activities, the batch runner and the email trigger use only
these protocols, never a type's settings or its transport. SMTP sends through its
connection pool; IMAP offers a mailbox with folders and UIDs (`FolderMailbox`), POP3
one drop of numbered messages (`MessageDrop`). A `FolderMailbox` may also say what
changed in a folder since a cursor (`ChangeFeed`, Microsoft Graph's delta queries): the
email trigger then follows that instead of a UID high-water mark.

Nothing here imports a protocol library: this module is read when the CLI builds
its options.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mailwright.errors import TargetError


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A target's provider limits: messages per second, per minute and per UTC day (None: unlimited)."""

    per_second: int | None = None
    per_minute: int | None = None
    per_day: int | None = None

    @classmethod
    def of(cls, settings: Any) -> RateLimits:
        """The limits kept under the conventional setting names (`rate_per_second`…); none: unlimited."""
        return cls(
            per_second=getattr(settings, "rate_per_second", None),
            per_minute=getattr(settings, "rate_per_minute", None),
            per_day=getattr(settings, "rate_per_day", None),
        )

    def __bool__(self) -> bool:
        return any((self.per_second, self.per_minute, self.per_day))

    def windows(self) -> list[tuple[int, float]]:
        """(limit, seconds) of the in-memory sliding windows."""
        out: list[tuple[int, float]] = []
        if self.per_second:
            out.append((self.per_second, 1.0))
        if self.per_minute:
            out.append((self.per_minute, 60.0))
        return out


UNLIMITED = RateLimits()


@dataclass(slots=True)
class SendReport:
    """What the target said about one message: per recipient, overall, and how it travelled."""

    recipients: list[dict[str, Any]]  # {"address", "status": accepted|refused, "code", "reply"}
    code: int
    reply: str
    size: int
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@runtime_checkable
class MailSender(Protocol):
    """Sends prepared messages (envelope and MIME bytes) through one target.

    Safe for many concurrent sends; pooled where the protocol allows. `before_data`
    is awaited just before the message's content is handed over, after which the
    outcome may be unknown (the durable "sending" mark).
    """

    @property
    def where(self) -> str:
        """The server or place the mail goes to, for messages ("smtp.example.org")."""
        ...

    @property
    def rate_limits(self) -> RateLimits: ...

    @property
    def connections(self) -> int:
        """How many messages it sends at once (a batch keeps a few more in hand per connection)."""
        ...

    @property
    def closed(self) -> bool:
        """Closed (its target was edited, or the process is stopping): get a new one from the target."""
        ...

    async def accepts_utf8(self) -> bool:
        """Whether UTF-8 addresses and headers may go as they are (SMTPUTF8)."""
        ...

    async def send(
        self,
        *,
        sender: str,
        recipients: list[tuple[str, bool]],
        data: bytes,
        utf8: bool,
        continue_if_one_address_valid: bool,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> SendReport:
        """Send one message; `recipients` are (address, needs UTF-8) pairs."""
        ...


@runtime_checkable
class FolderMailbox(Protocol):
    """A mailbox with folders, UIDs and flags (IMAP): what read_email and the email trigger use."""

    capabilities: set[str]  # as the server announced them ("IDLE", "MOVE"…)
    uidnext: int | None  # of the selected folder, when the server said

    async def select(self, folder: str = "INBOX", *, readonly: bool = False) -> tuple[int, int]:
        """Select `folder`; returns (UIDVALIDITY, message count)."""
        ...

    async def search_uids(self, criteria: str = "ALL") -> list[int]: ...

    async def fetch_rfc822(self, uids: Iterable[int]) -> dict[int, bytes]:
        """The messages' bytes, without marking them read."""
        ...

    async def add_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None: ...

    async def remove_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None: ...

    async def create_folder(self, name: str) -> bool: ...

    async def move(self, uids: Iterable[int], folder: str) -> None: ...

    async def delete(self, uids: Iterable[int]) -> None: ...

    async def idle(self, *, timeout: float) -> bool:
        """Wait for new mail (at most `timeout` seconds); True when the server said something."""
        ...


@dataclass(frozen=True, slots=True)
class FolderChanges:
    """What changed in a folder since a cursor, and the cursor to keep for the next look.

    `changed`: (UID, key) of each message now in the folder that arrived, was moved in or
    was changed since the cursor (a delta does not tell these apart: the caller knows which
    keys it has seen); the key is the message's stable id, kept across moves. `removed`:
    the keys of messages that left. Without a cursor, `changed` is every message there now.
    """

    changed: list[tuple[int, str]]
    removed: list[str]
    cursor: str


class ChangesExpiredError(TargetError):
    """The cursor is too old for the server to answer from: look again without one."""

    code = "changes_expired"


@runtime_checkable
class ChangeFeed(Protocol):
    """A `FolderMailbox` that can say what changed in a folder since a cursor (Graph's delta queries).

    Optional: the email trigger follows the changes when a mailbox offers this, which also
    sees mail moved into the folder with its old arrival time, else it keeps a UID mark.
    """

    async def changes(self, folder: str, cursor: str | None = None) -> FolderChanges:
        """The changes since `cursor` (None: everything there now); `ChangesExpiredError` when it expired."""
        ...


@runtime_checkable
class MessageDrop(Protocol):
    """One inbox of numbered messages known by UIDL (POP3); deletions take effect on closing."""

    async def uidl(self) -> dict[int, str]: ...

    async def retrieve(self, number: int) -> bytes: ...

    async def top(self, number: int, lines: int) -> bytes: ...

    async def delete(self, number: int) -> None: ...


Mailbox = FolderMailbox | MessageDrop
