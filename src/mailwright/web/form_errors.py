"""Every error of a submitted form at once, each by its field, in the web UI's own words.

A form's checks run one after another inside `FormErrors.check()`; each error found is
kept (the first for a field wins) and the page shows them all: beside each field, and
in a summary at the top that links to the fields. A `ValidationError` with `field_problems`
(all of a model's) gives one error per field. Messages name the field by its label,
never by its API name ("Port must be 65535 or less", not "port: input should be…"),
and hints written for the command line (an option, a `mailwright` command) are left
out: the form itself is how the user fixes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from mailwright.errors import FieldProblem, MailwrightError, ValidationError

_CLI_PART = re.compile(r"\s*\((?:--|`)[^)]*\)")  # "replace it (--replace)" → "replace it"
_API_PREFIX = re.compile(r"^[a-z_][\w.]*: ")  # "port: …" as a model's error begins


def web_hint(hint: str | None) -> str | None:
    """The hint without command-line wording; None when nothing else is left."""
    if not hint:
        return None
    cleaned = _CLI_PART.sub("", hint).strip()
    if not cleaned or "--" in cleaned or "`" in cleaned or "mailwright " in cleaned:
        return None
    return cleaned


def web_message(error: MailwrightError) -> str:
    """An error as a page shows it: the message, then the hint if it suits the web UI."""
    hint = web_hint(error.hint)
    return _sentence(error.message + (f" — {hint}" if hint else ""))


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!", ")")) else text + "."


class FormErrors:
    """The errors of one submitted form, by field name ("" for the form as a whole)."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self._labels = dict(labels or {})
        self.by_field: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self.by_field)

    def __contains__(self, name: object) -> bool:
        return name in self.by_field

    @contextmanager
    def check(self) -> Iterator[None]:
        """Run one check: an error it raises is kept, and the form's other checks go on."""
        try:
            yield
        except MailwrightError as exc:
            self.add(exc)

    def add(self, error: MailwrightError) -> None:
        if isinstance(error, ValidationError) and error.field_problems:
            for problem in error.field_problems:
                self._put(problem.field, self._problem_text(problem))
            return
        field = _field(error.field)
        message = _API_PREFIX.sub("", error.message) if field else error.message
        hint = web_hint(error.hint)
        self._put(field, self._named(field, message + (f" — {hint}" if hint else "")))

    def put(self, field: str, message: str) -> None:
        """An error the page found itself, worded for the form (named by its label here)."""
        self._put(field, self._named(field, message))

    def missing(self, field: str) -> None:
        """A required field left blank ("Name is required")."""
        self._put(field, _sentence(f"{self.label(field)} is required"))

    def label(self, field: str) -> str:
        return self._labels.get(field) or field.replace("_", " ").capitalize()

    def _problem_text(self, problem: FieldProblem) -> str:
        field = _field(problem.field)
        if problem.predicate and field:
            return _sentence(f"{self.label(field)} {problem.message}")
        return self._named(field, problem.message)

    def _named(self, field: str, message: str) -> str:
        """The message with the field's label in front, unless it names the field already."""
        if not field:
            return _sentence(message)
        label = self.label(field)
        if label.lower() in message.lower():
            return _sentence(message)
        return _sentence(f"{label}: {message}")

    def _put(self, field: str, text: str) -> None:
        self.by_field.setdefault(_field(field), text)


def _field(name: str | None) -> str:
    return (name or "").split(".")[0]
