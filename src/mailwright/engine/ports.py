"""What the engine needs from the layers above it, as Protocols; services/app.py passes them in.

The engine resolves no target, builds no message and opens no connection itself:
an activity gets its context from `ActivityContexts`, and a batch sends through a
`BatchSender`, which resolves each message's target (once per target and key),
takes its rate-limit slot and hands it to the target's pooled sender.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from mailwright.activities.context import ActivityContext

Message = TypeVar("Message")


class ActivityContexts(Protocol):
    """Builds the context an activity runs with (its targets, its file store, the send hooks).

    `claim_epoch` is the lease epoch of the run's current execution: what one execution
    resolves (its targets) it may keep for its steps; the next claim starts afresh.
    """

    def context(
        self,
        *,
        run_id: str,
        claim_epoch: int,
        step: str,
        target: str | None,
        account_key: str | None,
        message_id: str | None,
        remember_message_id: Callable[[str], None],
        mark_sending: Callable[[], Awaitable[None]],
    ) -> ActivityContext: ...


class BatchSender(Protocol[Message]):
    """One batch's way to send its messages; it may cache per target and key for the batch."""

    def prepare(self, inputs: dict[str, Any]) -> Message:
        """A message from its step's stored fields; raises MailwrightError when it cannot be sent."""
        ...

    def message_id_domain(self, message: Message) -> str:
        """The domain of the Message-ID to give the message (its sender's)."""
        ...

    def slot(self, message: Message, *, max_wait: float) -> Awaitable[None] | None:
        """Waits for the target's rate-limit slot (None: the target has no limit).

        Raises RateLimitedError when the slot is further away than `max_wait` seconds.
        """
        ...

    async def deliver(
        self, message: Message, *, message_id: str, before_data: Callable[[], Awaitable[None]]
    ) -> dict[str, Any]:
        """Send it; `before_data` is awaited just before DATA. The step's output ("status": "sent"
        or "partial"). Raises the target's errors (TargetError and its kind)."""
        ...


class BatchSenders(Protocol):
    def for_batch(self, *, target: str, account_key: str | None) -> BatchSender[Any]: ...
