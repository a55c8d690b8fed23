"""What an activity gets from the engine: its target, its key, the file store and the hooks of durable sends.

Activities never import services: they see the services through these small protocols,
which the services' objects satisfy (TargetService, ResolvedTarget, FileStore) and the
engine passes in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mailwright.domain.capabilities import Mailbox, MailSender, RateLimits
from mailwright.domain.connection_test import ConnectionTestReport
from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.transport.base import Login


class TargetInfo(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def display_name(self) -> str: ...

    @property
    def type_label(self) -> str: ...


class Target(Protocol):
    """A resolved target: who it is, its login, and what it can do."""

    @property
    def target(self) -> TargetInfo: ...

    @property
    def login(self) -> Login | None: ...

    @property
    def sender(self) -> str | None:
        """The account key's default From."""
        ...

    def mail_sender(self, purpose: str) -> MailSender:
        """Its `MailSender`; a ValidationError naming `purpose` when the type cannot send."""
        ...

    def mailbox(self, purpose: str, *, folders: bool | None = None) -> AbstractAsyncContextManager[Mailbox]:
        """Its mailbox, opened when entered; `folders` True for IMAP-like, False for POP3-like."""
        ...

    def has_folders(self) -> bool:
        """Whether its mailbox has folders and UIDs (else it is one drop of numbered messages)."""
        ...

    def poll_seconds(self) -> float | None:
        """How often to look for new mail when the mailbox cannot say; None: the type does not say."""
        ...


class RateLimiter(Protocol):
    async def acquire(self, *, key: str, limits: RateLimits, target: str, max_wait: float) -> None:
        """Wait for a slot up to `max_wait` seconds; further away raises RateLimitedError (deferral)."""
        ...


class Targets(Protocol):
    """Resolving targets by name or id (with an account key override), testing them, their limits."""

    @property
    def rate_limits(self) -> RateLimiter: ...

    def resolve(self, ref: str, *, account_key: str | None = None) -> Target: ...

    async def test(self, ref: str) -> ConnectionTestReport: ...


class Files(Protocol):
    """The file store: attachments kept by content (`sha256:…`)."""

    def get(self, ref: str) -> bytes: ...

    def put(self, data: bytes) -> str: ...


@dataclass
class ActivityContext:
    run_id: str
    step: str  # "alert" or "each[2]"
    targets: Targets
    target: str | None
    account_key: str | None
    # A Send Email step keeps one Message-ID across attempts: the one stored (`message_id`), else
    # the one the activity chose and told `remember_message_id`. The engine writes it with the
    # durable "sending" mark that `mark_sending` makes before DATA (or with the attempt's failure).
    message_id: str | None
    remember_message_id: Callable[[str], None]
    mark_sending: Callable[[], Awaitable[None]]
    # Where read attachments are kept (None: they are returned inline, as base64).
    files: Files | None = None

    def require_target(self, activity: str) -> str:
        if not self.target:
            raise ValidationError(
                f"step {self.step!r} ({activity}) has no target",
                field="target",
                hint="give the workflow a target, the step a `target:`, or choose one when starting",
            )
        return self.target
