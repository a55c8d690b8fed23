"""A workflow's diagram: what starts it, then its steps in order with their `if`, loop and failure rule.

Pure: the document in, plain data out; templates/workflows/_diagram.html draws it in HTML
and CSS (a list of boxes joined by arrows), so every part of the picture is also text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from mailwright.domain.expressions import single_expression
from mailwright.domain.triggers import (
    AfterSuccessAction,
    Condition,
    ConditionField,
    ConditionOp,
    EmailTrigger,
)
from mailwright.domain.workflows import Schedule, Step, WorkflowDocument

__all__ = ["Diagram", "StartKind", "StartNode", "StepNode", "diagram"]

_SHOWN_ITEMS: Final = 3  # of a for_each list written in the document
_OPS: Final = {
    ConditionOp.EQUALS: "is",
    ConditionOp.CONTAINS: "contains",
    ConditionOp.WILDCARD: "matches",
    ConditionOp.REGEX: "matches the pattern",
}


class StartKind(StrEnum):
    EMAIL = "email"
    SCHEDULE = "schedule"
    MANUAL = "manual"


@dataclass(frozen=True)
class StartNode:
    """One way the workflow starts: an email trigger, a schedule, or by hand."""

    kind: StartKind
    title: str
    details: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class StepNode:
    number: int
    id: str
    activity: str
    condition: str | None  # the `if` expression, without its braces
    loop: str | None  # what `for_each` goes over, in words
    max_items: int
    continues_on_failure: bool
    skipped: bool  # skip_execution: recorded, never executed
    target: str | None
    retries: int


@dataclass(frozen=True)
class Diagram:
    starts: tuple[StartNode, ...]
    steps: tuple[StepNode, ...]

    @property
    def summary(self) -> str:
        """The picture in one sentence, for the figure's caption."""
        count = len(self.steps)
        ways = ", ".join(start.title for start in self.starts)
        conditional = sum(1 for step in self.steps if step.condition is not None)
        loops = sum(1 for step in self.steps if step.loop is not None)
        extras = [
            f"{conditional} with a condition" if conditional else "",
            f"{loops} repeated" if loops else "",
        ]
        shown = "; ".join(extra for extra in extras if extra)
        return (
            f"{count} step{'s' if count != 1 else ''}, run one after the other"
            + (f" ({shown})" if shown else "")
            + f". Started by: {ways}."
        )


def diagram(
    document: WorkflowDocument,
    *,
    schedules_enabled: Mapping[int, bool] | None = None,
    triggers_enabled: Mapping[int, bool] | None = None,
) -> Diagram:
    """The diagram of `document`; the enabled flags, when given, are the live ones (they can be toggled)."""
    starts = [
        _email_start(index, trigger, (triggers_enabled or {}).get(index, trigger.enabled))
        for index, trigger in enumerate(document.triggers)
    ]
    starts += [
        _schedule_start(index, schedule, (schedules_enabled or {}).get(index, schedule.enabled))
        for index, schedule in enumerate(document.schedules)
    ]
    starts.append(StartNode(kind=StartKind.MANUAL, title="By hand or through the API"))
    steps = tuple(_step(number, step) for number, step in enumerate(document.steps, start=1))
    return Diagram(starts=tuple(starts), steps=steps)


def _email_start(index: int, trigger: EmailTrigger, enabled: bool) -> StartNode:
    details = [f"Folder {trigger.folder}"]
    if trigger.conditions.all_:
        details.append("When " + " and ".join(_condition(c) for c in trigger.conditions.all_))
    if trigger.conditions.any_:
        details.append("When any of: " + "; ".join(_condition(c) for c in trigger.conditions.any_))
    details.append(_after_success(trigger))
    return StartNode(
        kind=StartKind.EMAIL,
        title=f"New mail in {trigger.target} (trigger {index})",
        details=tuple(details),
        enabled=enabled,
    )


def _after_success(trigger: EmailTrigger) -> str:
    action = trigger.after_success.action
    if action is AfterSuccessAction.MOVE:
        return f"After success: moved to {trigger.after_success.folder}"
    words = {
        AfterSuccessAction.NONE: "left as it is",
        AfterSuccessAction.MARK_READ: "marked read",
        AfterSuccessAction.DELETE: "deleted",
    }
    return f"After success: {words[action]}"


def _condition(condition: Condition) -> str:
    field = condition.field.value
    if condition.field is ConditionField.HEADER:
        field = f"header {condition.header}"
    if condition.field is ConditionField.HAS_ATTACHMENT:
        has = condition.value is not False
        return "it has an attachment" if has != condition.negate else "it has no attachment"
    negation = "not " if condition.negate else ""
    return f"{field} {negation}{_OPS[condition.op]} “{condition.value}”"


def _schedule_start(index: int, schedule: Schedule, enabled: bool) -> StartNode:
    details = (f"Inputs: {_short(schedule.inputs)}",) if schedule.inputs else ()
    return StartNode(
        kind=StartKind.SCHEDULE,
        title=f"Schedule {index}: cron {schedule.cron} (UTC)",
        details=details,
        enabled=enabled,
    )


def _step(number: int, step: Step) -> StepNode:
    return StepNode(
        number=number,
        id=step.id,
        activity=step.activity,
        condition=_expression(step.if_) if step.if_ is not None else None,
        loop=_loop(step.for_each),
        max_items=step.max_items,
        continues_on_failure=step.continue_on_failure,
        skipped=step.skip_execution,
        target=step.target,
        retries=step.retries,
    )


def _expression(text: str) -> str:
    inner = single_expression(text)
    return inner.strip() if inner is not None else text


def _loop(for_each: str | list[Any] | None) -> str | None:
    if for_each is None:
        return None
    if isinstance(for_each, str):
        return _expression(for_each)
    shown = ", ".join(_short(item) for item in for_each[:_SHOWN_ITEMS])
    more = len(for_each) - _SHOWN_ITEMS
    items = f"{len(for_each)} item{'s' if len(for_each) != 1 else ''}"
    return f"{items}: {shown}" + (f" and {more} more" if more > 0 else "")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"
