"""What an activity gets from the engine: its target, its key, and the hooks of durable sends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailwright.errors import ValidationError
from mailwright.services.targets import TargetService
from mailwright.storage.files import FileStore


@dataclass
class ActivityContext:
    run_id: str
    step: str  # "alert" or "each[2]"
    targets: TargetService
    target: str | None
    account_key: str | None
    # A Send Email step keeps one Message-ID across attempts: the one stored (`message_id`), else
    # the one the activity chose and told `remember_message_id`. The engine writes it with the
    # durable "sending" mark that `mark_sending` makes before DATA (or with the attempt's failure).
    message_id: str | None
    remember_message_id: Callable[[str], None]
    mark_sending: Callable[[], Awaitable[None]]
    # Where read attachments are kept (None: they are returned inline, as base64).
    files: FileStore | None = None

    def require_target(self, activity: str) -> str:
        if not self.target:
            raise ValidationError(
                f"step {self.step!r} ({activity}) has no target",
                field="target",
                hint="give the workflow a target, the step a `target:`, or choose one when starting",
            )
        return self.target
