"""No input field can add or change a header: every value is either refused or encoded."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwright.domain.addresses import parse_address
from mailwright.domain.message import build_mime
from mailwright.errors import ValidationError
from mailwright.services.sending import AttachmentIn, SendEmailRequest, build_outgoing

SENDER = parse_address("alice@example.org", field="from")
EXPECTED = {
    "date",
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "message-id",
    "in-reply-to",
    "references",
    "importance",
    "x-priority",
    "x-custom",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}

nasty = st.lists(
    st.sampled_from(
        ["a", "b", " ", ":", "\r", "\n", "\r\n", "Bcc: evil@x.org", "<", ">", '"', ",", "é", "=?"]
    ),
    max_size=12,
).map("".join)


FIELDS = ["subject", "name", "header", "reply", "ref", "filename"]
BENIGN = {"subject": "Hello", "name": "Bob", "header": "42", "reply": "", "ref": "", "filename": "f.txt"}


def render(values: dict[str, str]) -> tuple[str, bytes] | None:
    """The message bytes, or None when validation refused the input."""
    name = values["name"].replace("\\", "\\\\").replace('"', '\\"')
    try:
        request = SendEmailRequest.model_validate(
            {
                "target": "t",
                "to": [f'"{name}" <bob@example.net>'],
                "reply_to": values["reply"] or None,
                "subject": values["subject"],
                "body": values["subject"],
                "headers": {"X-Custom": values["header"]},
                "in_reply_to": values["ref"] or None,
                "attachments": [AttachmentIn(filename=values["filename"], content="")],
            }
        )
        message = build_outgoing(request, SENDER)
    except ValidationError:
        return None
    return values["subject"], build_mime(
        message, message_id="<m@example.org>", date=datetime.now(UTC), smtputf8=False
    )


def check(rendered: tuple[str, bytes]) -> None:
    subject, data = rendered
    parsed = email.message_from_bytes(data, policy=policy.default)
    names = {k.lower() for k in parsed.keys()}  # noqa: SIM118
    assert names <= EXPECTED, names - EXPECTED
    assert parsed.get_all("Bcc") is None
    assert len(parsed.get_all("Subject") or []) == 1
    assert str(parsed["Subject"]) == subject
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@example.net"]


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=nasty)
def test_no_field_injects_a_header(field: str, value: str) -> None:
    rendered = render({**BENIGN, field: value})
    if rendered is not None:
        check(rendered)


def test_tricky_but_valid_values_are_sent_encoded() -> None:
    for field, value in [
        ("subject", "a: b =? Bcc: evil@x.org"),
        ("subject", 'é, <x> "q"'),
        ("name", 'Doe, "J" <x>'),
        ("header", "Bcc: evil@x.org"),
        ("filename", "a:b <c>.txt"),
    ]:
        rendered = render({**BENIGN, field: value})
        assert rendered is not None, (field, value)
        check(rendered)
    for field, value in [
        ("subject", "a\r\nBcc: evil@x.org"),
        ("header", "x\nBcc: e@x.org"),
        ("ref", "<a@b>\r\nX: y"),
    ]:
        assert render({**BENIGN, field: value}) is None, (field, value)
