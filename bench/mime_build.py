"""Micro-benchmark: Mailwright's MIME builder against EmailMessage + as_bytes().

Run: .venv/bin/python bench/mime_build.py [--count 20000] [--baseline-count 2000]

Builds the common shapes (4.4 KB text; HTML + text; text + 30 KB attachment; UTF-8
headers and text) with `build_mime` and with `EmailMessage` the way other projects do
(headers, set_content, add_alternative, add_attachment, as_bytes with the SMTP policy
so both produce CRLF wire bytes), and prints microseconds per message and the ratio.
The standard library is ~50× slower, so it builds fewer messages to keep the run short.
"""

from __future__ import annotations

import argparse
import email
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime

from mailwright.domain.addresses import Address
from mailwright.domain.message import Attachment, OutgoingMessage, build_mime, normalise_newlines

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MESSAGE_ID = "<20261124120000.4242.0123456789abcdef01234567@example.org>"
TARGET_RATIO = 5.0

_LINE = "The quarterly report is attached; totals are up four percent on last year.\n"
TEXT = _LINE * 60  # ~4.4 KB
HTML = "<html><body>" + "".join(f"<p>{_LINE.strip()}</p>\n" for _ in range(60)) + "</body></html>"
UTF8_TEXT = "Grüße aus Köln — der Bericht für das Quartal ist fertig. Prüfen Sie die Zahlen.\n" * 55
ATTACHMENT = os.urandom(30 * 1024)


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    sender: tuple[str, str]
    recipient: tuple[str, str]
    subject: str
    text: str
    html: str | None = None
    attachment: bytes | None = None


SHAPES = [
    Shape("text 4.4 KB", ("Alice", "alice@example.org"), ("Bob", "bob@example.net"), "Weekly report", TEXT),
    Shape(
        "html + text",
        ("Alice", "alice@example.org"),
        ("Bob", "bob@example.net"),
        "Weekly report",
        TEXT,
        html=HTML,
    ),
    Shape(
        "text + 30 KB attachment",
        ("Alice", "alice@example.org"),
        ("Bob", "bob@example.net"),
        "Weekly report",
        TEXT,
        attachment=ATTACHMENT,
    ),
    Shape(
        "UTF-8 headers + text",
        ("Jürgen Müller", "juergen@example.org"),
        ("Zoë Ångström", "zoe@example.net"),
        "Grüße: Quartalsbericht für Köln und Düsseldorf, endgültige Fassung 📈",
        UTF8_TEXT,
    ),
]


def outgoing(shape: Shape) -> OutgoingMessage:
    attachments = [Attachment("report.pdf", shape.attachment)] if shape.attachment is not None else []
    return OutgoingMessage(
        sender=Address(addr=shape.sender[1], name=shape.sender[0], ascii_addr=shape.sender[1]),
        to=[Address(addr=shape.recipient[1], name=shape.recipient[0], ascii_addr=shape.recipient[1])],
        subject=shape.subject,
        text=shape.text,
        html=shape.html,
        attachments=attachments,
    )


def with_mailwright(shape: Shape) -> Callable[[], bytes]:
    message = outgoing(shape)
    return lambda: build_mime(message, message_id=MESSAGE_ID, date=NOW, smtputf8=False)


def with_email_message(shape: Shape) -> Callable[[], bytes]:
    def build() -> bytes:
        message = EmailMessage(policy=policy.SMTP)
        message["From"] = f"{shape.sender[0]} <{shape.sender[1]}>"
        message["To"] = f"{shape.recipient[0]} <{shape.recipient[1]}>"
        message["Subject"] = shape.subject
        message["Date"] = format_datetime(NOW)
        message["Message-ID"] = MESSAGE_ID
        message.set_content(shape.text)
        if shape.html is not None:
            message.add_alternative(shape.html, subtype="html")
        if shape.attachment is not None:
            message.add_attachment(
                shape.attachment, maintype="application", subtype="pdf", filename="report.pdf"
            )
        return message.as_bytes()

    return build


def per_message_us(build: Callable[[], bytes], count: int) -> float:
    """Best of three rounds, in microseconds per message."""
    rounds = []
    per_round = max(1, count // 3)
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(per_round):
            build()
        rounds.append((time.perf_counter() - started) / per_round)
    return min(rounds) * 1e6


def check_same_content(shape: Shape, ours: bytes, theirs: bytes) -> None:
    """Both builders must say the same thing, or the comparison means nothing."""
    a = email.message_from_bytes(ours, policy=policy.default)
    b = email.message_from_bytes(theirs, policy=policy.default)
    assert isinstance(a, EmailMessage)
    assert isinstance(b, EmailMessage)
    # Not compared with EmailMessage's: its folder drops the space before an encoded
    # word here ("und Düsseldorf" reads back as "undDüsseldorf").
    assert str(a["Subject"]) == shape.subject
    assert [p.get_content_type() for p in a.walk()] == [p.get_content_type() for p in b.walk()]
    for x, y in zip(a.walk(), b.walk(), strict=True):
        if x.get_content_maintype() == "text":
            # EmailMessage adds a final newline the text did not have.
            assert _text(x) == _text(y)
        elif not x.is_multipart():
            assert x.get_payload(decode=True) == y.get_payload(decode=True)


def _text(part: EmailMessage) -> str:
    return normalise_newlines(part.get_content()).rstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages per shape (Mailwright)")
    parser.add_argument("--baseline-count", type=int, default=2_000, help="messages per shape (stdlib)")
    args = parser.parse_args()

    print(f"{'shape':<26}{'bytes':>8}{'mailwright µs':>15}{'EmailMessage µs':>17}{'ratio':>8}")
    ratios = []
    for shape in SHAPES:
        ours, theirs = with_mailwright(shape), with_email_message(shape)
        check_same_content(shape, ours(), theirs())
        fast = per_message_us(ours, args.count)
        slow = per_message_us(theirs, args.baseline_count)
        ratios.append(slow / fast)
        print(f"{shape.name:<26}{len(ours()):>8}{fast:>15.1f}{slow:>17.1f}{slow / fast:>7.1f}×")
    verdict = "met" if min(ratios) >= TARGET_RATIO else "NOT met"
    print(f"target ≥{TARGET_RATIO:.0f}× for every shape: {verdict} (lowest {min(ratios):.1f}×)")


if __name__ == "__main__":
    main()
