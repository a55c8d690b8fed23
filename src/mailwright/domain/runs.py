"""The states of runs, steps and sends: one spelling each, stored as these strings.

They are `StrEnum`s, so a member equals the text the database holds ("succeeded" ==
RunStatus.SUCCEEDED) and JSON carries the plain string.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_RUN_STATUSES


# A run in one of these states never changes again.
FINISHED_RUN_STATUSES: Final = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
# The same set as a tuple, ordered, for SQL `IN (...)` clauses and messages.
FINISHED_RUN_STATUS_LIST: Final = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    # Waits for its not_before (a transient failure, a rate limit), then runs again.
    DEFERRED = "deferred"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Its message may or may not have been delivered: never resent on its own.
    UNKNOWN = "unknown"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# Steps that may still run.
OPEN_STEP_STATUSES: Final = (StepStatus.PENDING, StepStatus.DEFERRED)


class SendState(StrEnum):
    """Where a Send Email step's message is (NULL: not handed to a server yet).

    The SENDING mark is written durably before DATA, so a step found SENDING after a crash
    is never sent again on its own: it becomes UNKNOWN unless the server's answer was kept.
    """

    SENDING = "sending"
    SENT = "sent"
    UNKNOWN = "unknown"
