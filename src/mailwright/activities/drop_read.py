"""Reading a POP3 drop the way `read_email` reads an IMAP folder: newest first, filtered, nothing removed.

POP3 has one mailbox, no folders, no read flags and no server-side search: the filters a
drop can answer (sender, recipient, subject, dates, headers) are matched on each message's
headers (TOP n 0), newest first, and only the chosen messages are retrieved whole. What
a drop cannot do (unseen, mark as read, move, a folder) is refused with the reason, not
silently ignored. Messages are deleted only with after=delete, at the end of the session.
"""

from __future__ import annotations

import email
from datetime import date
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

from mailwright.activities.context import Files, Targets
from mailwright.activities.mailbox import pop3_mailbox
from mailwright.activities.read_email import ReadEmailInput, message_output
from mailwright.domain.capabilities import MessageDrop
from mailwright.errors import ValidationError

POP3_ONLY = "a POP3 mailbox"


def refuse_what_pop3_cannot(inputs: ReadEmailInput) -> None:
    """A clear error for each option a POP3 drop has no way to honour."""
    if inputs.folder.upper() != "INBOX":
        raise ValidationError(
            f"folder: {POP3_ONLY} has no folders (asked for {inputs.folder!r})",
            field="folder",
            hint="leave the folder out on a POP3 target, or read through an IMAP target",
        )
    if inputs.unseen:
        raise ValidationError(
            f"unseen: {POP3_ONLY} keeps no read/unread flags",
            field="unseen",
            hint="read through an IMAP target to see only unread mail",
        )
    if inputs.after in ("mark_read", "move"):
        raise ValidationError(
            f"after: {POP3_ONLY} can only keep or delete what was read, not {inputs.after.replace('_', ' ')}",
            field="after",
            hint="use after: nothing (the default) or delete on a POP3 target",
        )
    if inputs.larger_than is not None:
        raise ValidationError(
            f"larger_than: not available on {POP3_ONLY}", field="larger_than", hint="read through IMAP"
        )


def _headers(top: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(top, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _contains(value: object, wanted: str | None) -> bool:
    return wanted is None or wanted.casefold() in str(value or "").casefold()


def _sent_on(headers: EmailMessage) -> date | None:
    try:
        return parsedate_to_datetime(str(headers["Date"])).date() if headers["Date"] else None
    except (TypeError, ValueError):
        return None


def matches(headers: EmailMessage, inputs: ReadEmailInput) -> bool:
    """Whether the message's headers satisfy the filters (as IMAP's SEARCH would: contains, any case)."""
    if not (
        _contains(headers["From"], inputs.from_)
        and _contains(headers["To"], inputs.to)
        and _contains(headers["Subject"], inputs.subject)
    ):
        return False
    if not all(_contains(headers[name], value) for name, value in inputs.header.items()):
        return False
    sent = _sent_on(headers)
    if inputs.since is not None and (sent is None or sent < inputs.since):
        return False
    return inputs.before is None or (sent is not None and sent < inputs.before)


def _filtered(inputs: ReadEmailInput) -> bool:
    return any((inputs.from_, inputs.to, inputs.subject, inputs.header, inputs.since, inputs.before))


async def _matching(drop: MessageDrop, numbers: list[int], inputs: ReadEmailInput) -> list[int]:
    if not _filtered(inputs):
        return numbers
    return [number for number in numbers if matches(_headers(await drop.top(number, 0)), inputs)]


async def read_drop(
    targets: Targets, target: str, inputs: ReadEmailInput, *, files: Files | None = None
) -> dict[str, Any]:
    """`read_messages` for a POP3 target: the same result, `uid` being the message's number."""
    refuse_what_pop3_cannot(inputs)
    async with pop3_mailbox(targets, target, activity="read_email", account_key=inputs.account_key) as drop:
        listing = await drop.uidl()
        numbers = await _matching(drop, sorted(listing, reverse=inputs.order == "newest"), inputs)
        messages = []
        for number in numbers[: inputs.max]:
            output = message_output(number, await drop.retrieve(number), inputs, files=files)
            if output is not None:
                output["uidl"] = listing[number]
                messages.append(output)
        if inputs.after == "delete":
            for message in messages:
                await drop.delete(message["uid"])  # applied at QUIT, when the drop closes
    return {
        "target": targets.resolve(target, account_key=inputs.account_key).target.display_name,
        "folder": "INBOX",
        "uidvalidity": None,
        "matched": len(numbers),
        "count": len(messages),
        "after": inputs.after,
        "messages": messages,
    }
