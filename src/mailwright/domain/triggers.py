"""Email triggers in workflow documents: their model and the conditions on a message.

A trigger is written in the workflow document::

    triggers:
      - type: email
        target: Support inbox          # an IMAP, POP3 or Microsoft Graph Endpoint target, by display name
        folder: INBOX
        conditions:
          all:
            - {field: subject, op: contains, value: Invoice}
          any:
            - {field: from, op: wildcard, value: "*@supplier.example"}
            - {field: has_attachment}
        download_attachments: true
        after_success: {action: move, folder: Processed}
        on_failure: {action: retry, max_attempts: 3}

Pure: no I/O. `matches()` decides on the fields of a parsed message (the Read Email
output), so the same decision can be tested without a server.
"""

from __future__ import annotations

import fnmatch
import re
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AfterSuccess",
    "AfterSuccessAction",
    "Condition",
    "ConditionField",
    "ConditionOp",
    "Conditions",
    "EmailTrigger",
    "OnFailure",
    "matches",
]

MAX_PATTERN_CHARS: Final = 500


class ConditionField(StrEnum):
    FROM = "from"
    SENDER = "sender"  # the same as from: the reference product's word for it
    TO = "to"
    CC = "cc"
    SUBJECT = "subject"
    BODY = "body"
    HEADER = "header"
    HAS_ATTACHMENT = "has_attachment"
    ATTACHMENT_NAME = "attachment_name"


class ConditionOp(StrEnum):
    EQUALS = "equals"
    CONTAINS = "contains"
    WILDCARD = "wildcard"
    REGEX = "regex"


class Condition(BaseModel):
    """One test on the message; text comparisons ignore case unless `case_sensitive`."""

    model_config = ConfigDict(extra="forbid")

    field: ConditionField
    op: ConditionOp = ConditionOp.CONTAINS
    value: str | bool | None = None
    header: str | None = Field(default=None, min_length=1, max_length=200)
    case_sensitive: bool = False
    negate: bool = False

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        if self.field is ConditionField.HEADER and not self.header:
            raise ValueError("field header needs `header`: the name of the header, e.g. X-Priority")
        if self.field is not ConditionField.HEADER and self.header is not None:
            raise ValueError("`header` only goes with field: header")
        if self.field is ConditionField.HAS_ATTACHMENT:
            if self.value is None:
                self.value = True
            if not isinstance(self.value, bool):
                raise ValueError("field has_attachment takes value true or false")
            return self
        if not isinstance(self.value, str) or self.value == "":
            raise ValueError(f"field {self.field.value} needs a text `value` to compare with")
        if len(self.value) > MAX_PATTERN_CHARS:
            raise ValueError(f"the value is longer than {MAX_PATTERN_CHARS} characters")
        if self.op is ConditionOp.REGEX:
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"the regex {self.value!r} does not compile: {exc}") from None
        return self


class Conditions(BaseModel):
    """`all` must all hold and at least one of `any` must hold (an empty list does not restrict)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    all_: list[Condition] = Field(default_factory=list, alias="all")
    any_: list[Condition] = Field(default_factory=list, alias="any")


class AfterSuccessAction(StrEnum):
    NONE = "none"
    MARK_READ = "mark_read"
    MOVE = "move"
    DELETE = "delete"


class AfterSuccess(BaseModel):
    """What is done to the message once the run it started has succeeded (never before)."""

    model_config = ConfigDict(extra="forbid")

    action: AfterSuccessAction = AfterSuccessAction.NONE
    folder: str | None = Field(default=None, min_length=1, max_length=500)

    @model_validator(mode="after")
    def _folder(self) -> AfterSuccess:
        if self.action is AfterSuccessAction.MOVE and not self.folder:
            raise ValueError("action move needs `folder`: where to move the message, e.g. Processed")
        if self.action is not AfterSuccessAction.MOVE and self.folder is not None:
            raise ValueError("`folder` only goes with action: move")
        return self


class OnFailure(BaseModel):
    """When the run fails the message stays where it was; `retry` starts a new run for it."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["report", "retry"] = "report"
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_after: int = Field(default=60, ge=1, le=86_400, description="seconds before a new run")


class EmailTrigger(BaseModel):
    """Start the workflow once for each new message in a folder that meets the conditions."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["email"] = "email"
    target: str = Field(min_length=1, max_length=200)
    folder: str = Field(default="INBOX", min_length=1, max_length=500)
    conditions: Conditions = Field(default_factory=Conditions)
    download_attachments: bool = True
    attachment_size_limit: int = Field(default=25 * 1024 * 1024, ge=0)
    after_success: AfterSuccess = Field(default_factory=AfterSuccess)
    on_failure: OnFailure = Field(default_factory=OnFailure)
    include_existing: bool = Field(
        default=False, description="on first start, also take the mail already in the folder"
    )
    enabled: bool = True
    inputs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("conditions", "after_success", "on_failure", "inputs", mode="before")
    @classmethod
    def _empty_when_null(cls, value: Any) -> Any:
        return {} if value is None else value


# --------------------------------------------------------------------------------------
# Deciding
# --------------------------------------------------------------------------------------


def _texts(condition: Condition, message: dict[str, Any]) -> list[str]:
    field = condition.field
    if field in (ConditionField.FROM, ConditionField.SENDER):
        return [str(message.get("from") or "")]
    if field in (ConditionField.TO, ConditionField.CC):
        return [str(a) for a in message.get(field.value) or []]
    if field is ConditionField.SUBJECT:
        return [str(message.get("subject") or "")]
    if field is ConditionField.BODY:
        return [str(message.get("text") or ""), str(message.get("html") or "")]
    if field is ConditionField.ATTACHMENT_NAME:
        return [str(a.get("file_name") or "") for a in message.get("attachments") or []]
    wanted = (condition.header or "").casefold()
    return [str(v) for name, v in _header_pairs(message.get("headers")) if name.casefold() == wanted]


def _header_pairs(headers: Any) -> list[tuple[str, Any]]:
    if isinstance(headers, dict):
        return [(str(k), v) for k, v in headers.items()]
    if isinstance(headers, list):
        pairs: list[tuple[str, Any]] = []
        for item in headers:
            if isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((str(item[0]), item[1]))
            elif isinstance(item, dict) and "name" in item:
                pairs.append((str(item["name"]), item.get("value", "")))
        return pairs
    return []


def _compare(condition: Condition, text: str) -> bool:
    pattern = str(condition.value)
    flags = 0 if condition.case_sensitive else re.IGNORECASE
    if condition.op is ConditionOp.REGEX:
        return re.search(pattern, text, flags) is not None
    if not condition.case_sensitive:
        text, pattern = text.casefold(), pattern.casefold()
    if condition.op is ConditionOp.EQUALS:
        return text.strip() == pattern.strip()
    if condition.op is ConditionOp.CONTAINS:
        return pattern in text
    return fnmatch.fnmatchcase(text, pattern)


def holds(condition: Condition, message: dict[str, Any]) -> bool:
    if condition.field is ConditionField.HAS_ATTACHMENT:
        result = bool(message.get("attachments")) == condition.value
    else:
        result = any(_compare(condition, text) for text in _texts(condition, message))
    return result != condition.negate


def matches(conditions: Conditions, message: dict[str, Any]) -> bool:
    """Whether the message (Read Email output fields) meets the trigger's conditions."""
    if not all(holds(c, message) for c in conditions.all_):
        return False
    return not conditions.any_ or any(holds(c, message) for c in conditions.any_)
