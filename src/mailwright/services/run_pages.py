"""Pages of runs and of a run's steps: the Runs list's filters, a batch's steps searched and paged,
and a run's progress (the counts of its steps by status), cheap enough to poll."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, String, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from mailwright.domain.runs import StepStatus
from mailwright.errors import ValidationError
from mailwright.storage.tables import RunRow, RunStepRow, StepInputRow, name_key

T = TypeVar("T")
PAGE_MAX = 1000
SEARCH_MAX = 200
RECIPIENT_FIELDS = ("to", "cc", "bcc")
# A step that has not ended yet: a batch's progress counts the others as done.
NOT_DONE = frozenset({StepStatus.PENDING, StepStatus.RUNNING, StepStatus.DEFERRED})
# The order the status filter offers a run's steps in: what needs a look first.
STATUS_ORDER = (
    StepStatus.FAILED,
    StepStatus.UNKNOWN,
    StepStatus.DEFERRED,
    StepStatus.RUNNING,
    StepStatus.PENDING,
    StepStatus.CANCELLED,
    StepStatus.SKIPPED,
    StepStatus.SUCCEEDED,
)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a longer list: its items, how many there are in all, and where it starts."""

    items: list[T]
    total: int
    offset: int
    limit: int

    @property
    def first(self) -> int:
        """The 1-based position of the first item shown (0 when there are none)."""
        return self.offset + 1 if self.items else 0

    @property
    def last(self) -> int:
        return self.offset + len(self.items)

    @property
    def previous_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.last < self.total else None


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs the list shows: by status, by workflow (name or id), by target (name)."""

    status: str | None = None
    workflow: str | None = None
    target: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.status:
            found.append(RunRow.status == self.status)
        if self.workflow and (workflow := self.workflow.strip()):
            # By id, or by name in any case (runs keep the name they were started under).
            found.append(
                (RunRow.workflow_id == workflow) | (func.lower(RunRow.workflow_name) == workflow.lower())
            )
        if self.target and (target := self.target.strip()):
            found.append(func.lower(RunRow.target) == name_key(target))
        return found


@dataclass(frozen=True, slots=True)
class StepFilter:
    """Which of a run's steps a page shows: a status (or send state) and a search text."""

    state: str | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if self.search is not None and len(self.search) > SEARCH_MAX:
            raise ValidationError(
                f"the search text is {len(self.search)} characters long",
                field="q",
                hint=f"search for a recipient or a Message-ID of at most {SEARCH_MAX} characters",
            )


@dataclass(frozen=True, slots=True)
class RunProgress:
    """A run's status and its steps by status: what the run page polls while the run goes on."""

    status: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for status, n in self.counts.items() if status not in NOT_DONE)

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "total": self.total, "done": self.done, "counts": self.counts}


def bounded(offset: int, limit: int) -> tuple[int, int]:
    """An offset of 0 or more, a limit of 1 to PAGE_MAX."""
    return max(0, offset), max(1, min(limit, PAGE_MAX))


def runs_query(where: RunFilter) -> Select[RunRow]:
    return select(RunRow).where(*where.conditions())


def count_of(session: Session, query: Select[Any]) -> int:
    counted = select(func.count()).select_from(query.order_by(None).subquery())
    return int(session.scalar(counted) or 0)


def step_counts(session: Session, run_id: str) -> dict[str, int]:
    """How many of the run's steps are in each status, in the order the filter offers them."""
    query = select(RunStepRow.status, func.count()).where(RunStepRow.run_id == run_id)
    counted = {str(status): int(n) for status, n in session.execute(query.group_by(RunStepRow.status))}
    return ordered_counts(counted)


def ordered_counts(counts: dict[str, int]) -> dict[str, int]:
    """Failed first, then unknown, …, succeeded last; a status this list does not know, at the end."""
    rank = {status.value: n for n, status in enumerate(STATUS_ORDER)}
    return dict(sorted(counts.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def search_condition(text: str) -> ColumnElement[bool]:
    """A Message-ID or a recipient (To, Cc or Bcc) containing `text`, in any case."""
    recipients: list[ColumnElement[bool]] = []
    for name in RECIPIENT_FIELDS:
        for column in (StepInputRow.inputs, RunStepRow.inputs):
            recipients.append(cast(column[name], String).icontains(text, autoescape=True))
    return or_(RunStepRow.message_id.icontains(text, autoescape=True), *recipients)


def steps_query(run_id: str, where: StepFilter, state_condition: Any) -> Select[RunStepRow]:
    """The run's steps in order, filtered; `state_condition` is the status's (runs.step_state_filter)."""
    query = (
        select(RunStepRow)
        .outerjoin(StepInputRow, StepInputRow.step_id == RunStepRow.id)
        .where(RunStepRow.run_id == run_id)
        .order_by(RunStepRow.position, RunStepRow.item_index)
    )
    if state_condition is not None:
        query = query.where(state_condition)
    if where.search and (text := where.search.strip()):
        query = query.where(search_condition(text))
    return query


def page_of(session: Session, query: Select[Any], *, offset: int, limit: int) -> tuple[Sequence[Any], int]:
    """The rows of one page of `query`, and how many rows it has in all."""
    rows = session.scalars(query.offset(offset).limit(limit)).all()
    return rows, count_of(session, query)
