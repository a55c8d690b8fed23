"""Send Email: a one-off message through a chosen target; the answer is the run's page.

The form carries a one-time key, made when the page is rendered and used as the
send's idempotency key: submitting the same form again (a double click, the back
button and Send) answers with the run the first submit started and sends nothing
more. After sending, the browser is redirected (303) to the run's page, so a reload
shows the result again instead of posting the form again.
"""

from __future__ import annotations

import base64
import mimetypes
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from mailwright.domain.addresses import parse_address, parse_address_list
from mailwright.domain.send_request import custom_headers
from mailwright.domain.validation import validate_model
from mailwright.errors import IdempotencyKeyReusedError, MailwrightError
from mailwright.services.idempotency import HEADER, WEB_SEND_SCOPE
from mailwright.services.sending import AttachmentIn, SendEmailRequest
from mailwright.services.waiting import SendAnswer
from mailwright.services.web_auth import WebSession
from mailwright.web import forms
from mailwright.web.deps import ServicesDep
from mailwright.web.form_errors import FormErrors, web_hint
from mailwright.web.render import field_errors, redirect, render
from mailwright.web.roles import OperatorSession
from mailwright.web.session import check_csrf

router = APIRouter(include_in_schema=False)

KEY_FIELD = "idempotency_key"
# How long the submit waits for the message to be sent before showing the run's page anyway
# (which then shows it queued or running).
SEND_WAIT_SECONDS = 60.0


def new_form_key() -> str:
    """A one-time key for one rendering of the form (192 random bits)."""
    return secrets.token_urlsafe(24)


@router.get("/send")
def send_page(
    request: Request, services: ServicesDep, session: OperatorSession, target: str = ""
) -> HTMLResponse:
    response = render(
        request,
        "send.html",
        session=session,
        section="send",
        targets=services.targets.list_all(),
        values={"target": target, KEY_FIELD: new_form_key()},
        errors={},
        failure=None,
    )
    # The page holds no secret. Kept by the browser (but revalidated when opened anew), so the
    # back button brings back this very form, key and all: a second submit is a retry.
    response.headers["Cache-Control"] = "private, max-age=0"
    return response


# The form's labels by the request's field names, for its error messages.
LABELS = {
    "target": "Target",
    "from": "From",
    "to": "To",
    "cc": "CC",
    "bcc": "BCC",
    "reply_to": "Reply-To",
    "subject": "Subject",
    "body": "Text",
    "html": "HTML",
    "headers": "Custom headers",
    "importance": "Importance",
    "attachments": "Attachments",
}


async def _attachments(form: FormData) -> list[AttachmentIn]:
    """Every file chosen (the box takes several), as the API's attachments."""
    attachments = []
    for upload in forms.uploads(form, "attachments"):
        data = await upload.read()
        content_type = upload.content_type or mimetypes.guess_type(upload.filename or "")[0]
        attachments.append(
            AttachmentIn(
                filename=upload.filename or "attachment",
                content_type=content_type,
                content=base64.b64encode(data).decode(),
            )
        )
    return attachments


def _multiline(form: FormData, name: str) -> str | None:
    """A text area as typed (not stripped: leading spaces can matter in a message); None when blank."""
    value = form.get(name)
    return value if isinstance(value, str) and value.strip() else None


def _header_lines(form: FormData) -> list[str]:
    """Custom headers, one "Name: value" a line."""
    return [line.strip() for line in forms.text(form, "headers").splitlines() if line.strip()]


def _check_fields(form: FormData) -> FormErrors:
    """The addresses and headers, each field checked on its own, so that every bad one is reported at once."""
    errors = FormErrors(LABELS)
    for name in ("to", "cc", "bcc", "reply_to"):
        with errors.check():
            parse_address_list(forms.text(form, name), field=name)
    if forms.text(form, "from"):
        with errors.check():
            parse_address(forms.text(form, "from"), field="from")
    with errors.check():
        custom_headers(_header_lines(form))
    if not any(forms.text(form, name) for name in ("to", "cc", "bcc")):
        errors.put("to", "give at least one recipient in To, CC or BCC")
    return errors


def _request_data(form: FormData, attachments: list[AttachmentIn]) -> dict[str, Any]:
    return {
        "target": forms.text(form, "target"),
        "from": forms.optional(form, "from"),
        "to": forms.text(form, "to"),
        "cc": forms.text(form, "cc"),
        "bcc": forms.text(form, "bcc"),
        "reply_to": forms.text(form, "reply_to") or None,
        "subject": forms.text(form, "subject"),
        "body": _multiline(form, "body"),
        "html": _multiline(form, "html"),
        "headers": _header_lines(form),
        "importance": forms.text(form, "importance") or "normal",
        "attachments": attachments,
        "continue_if_one_address_valid": forms.boolean(form, "continue_if_one_address_valid"),
    }


@router.post("/send/message")
async def send(request: Request, services: ServicesDep, session: OperatorSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    context: dict[str, Any] = {"targets": services.targets.list_all(), "values": forms.values(form)}
    key = forms.optional(form, KEY_FIELD)  # None: a form rendered before keys existed
    errors = _check_fields(form)
    try:
        with errors.check():
            request_model = validate_model(SendEmailRequest, _request_data(form, await _attachments(form)))
        if errors:
            return _form(request, session, context, errors=errors.by_field, failure=None, status=422)
        answer = await services.waiting.send_and_wait(
            request_model, key=key, scope=WEB_SEND_SCOPE, timeout=SEND_WAIT_SECONDS
        )
    except IdempotencyKeyReusedError:
        # This form was sent, then changed (back button, edit, Send): the change is a new message.
        # Say so, and give the form a new key: sending it again sends the changed message.
        context["values"][KEY_FIELD] = new_form_key()
        message = (
            "This form was already sent, and it has changed since. "
            "Press Send again to send it as a new message."
        )
        return _form(request, session, context, errors={"": message}, failure=None, status=409)
    except MailwrightError as exc:
        return _refused(request, session, context, exc)
    # POST/redirect/GET: reloading the run's page never posts the form again.
    return redirect(f"/runs/{answer.run_id}", flash=_outcome(answer))


def _refused(
    request: Request, session: WebSession, context: dict[str, Any], exc: MailwrightError
) -> HTMLResponse:
    """The form again, with every problem of the request beside its field (or why sending failed)."""
    errors = field_errors(exc, LABELS)
    if exc.field == HEADER:  # the form's hidden key was tampered with: a new one, and say so
        context["values"][KEY_FIELD] = new_form_key()
        errors = {"": f"This form's one-time key was not usable ({exc.message}); press Send again."}
    failure = None if "" not in errors or exc.code == "validation_error" else exc.details()
    if failure is not None and failure.get("hint"):
        failure["hint"] = web_hint(failure["hint"])
    status = 422 if exc.code in {"validation_error", "not_found"} else 502
    return _form(request, session, context, errors=errors, failure=failure, status=status)


def _form(
    request: Request,
    session: WebSession,
    context: dict[str, Any],
    *,
    errors: dict[str, str],
    failure: dict[str, Any] | None,
    status: int,
) -> HTMLResponse:
    return render(
        request,
        "send.html",
        session=session,
        section="send",
        errors=errors,
        failure=failure,
        status_code=status,
        **context,
    )


def _outcome(answer: SendAnswer) -> str:
    """The run's outcome in a sentence, shown at the top of its page."""
    before = "This form was already sent; nothing was sent again. " if answer.replayed else ""
    if answer.result is not None:
        result = answer.result
        accepted = sum(r.status == "accepted" for r in result.recipients)
        total = len(result.recipients)
        verb = "Sent" if result.status == "sent" else f"Sent to {accepted} of {total} recipients"
        return f"{before}{verb}: Message-ID {result.message_id} via “{result.target}”."
    if answer.error is not None:
        return f"{before}Not sent: {answer.error.get('message', f'the run {answer.status}')}"
    return f"{before}The message is {answer.status}; this page shows how it goes."
