"""Send Email: a one-off message through a chosen target; the answer is the run's page.

The form carries a one-time key, made when the page is rendered and used as the
send's idempotency key: submitting the same form again (a double click, the back
button and Send) answers with the run the first submit started and sends nothing
more. After sending, the browser is redirected (303) to the run's page, so a reload
shows the result again instead of posting the form again.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from mailwright.api.routes_workflows import wait_for_run
from mailwright.domain.runs import RunStatus
from mailwright.domain.validation import validate_model
from mailwright.errors import MailwrightError
from mailwright.services.app import Services
from mailwright.services.idempotency import (
    HEADER,
    WEB_SEND_SCOPE,
    IdempotencyClaim,
    IdempotencyKeyReusedError,
    Started,
)
from mailwright.services.runs import RunPublic
from mailwright.services.sending import AttachmentIn, SendEmailRequest, SendResult
from mailwright.services.web_auth import WebSession
from mailwright.web import forms
from mailwright.web.deps import ServicesDep
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


@router.post("/send/message")
async def send(request: Request, services: ServicesDep, session: OperatorSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    message = form.get("message") if isinstance(form.get("message"), str) else ""
    as_html = forms.boolean(form, "send_as_html")
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
    context: dict[str, Any] = {"targets": services.targets.list_all(), "values": forms.values(form)}
    key = forms.optional(form, KEY_FIELD)  # None: a form rendered before keys existed
    try:
        request_model = validate_model(
            SendEmailRequest,
            {
                "target": forms.text(form, "target"),
                "from": forms.optional(form, "from"),
                "to": forms.text(form, "to"),
                "cc": forms.text(form, "cc"),
                "bcc": forms.text(form, "bcc"),
                "subject": forms.text(form, "subject"),
                "html" if as_html else "body": message,
                "attachments": attachments,
                "continue_if_one_address_valid": forms.boolean(form, "continue_if_one_address_valid"),
            },
        )
        started = await asyncio.to_thread(_start, services, request_model, key)
        run = await wait_for_run(
            services, started.run_id, SEND_WAIT_SECONDS, services.runs.get, fresh=not started.replayed
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
        errors = field_errors(exc)
        if exc.field == HEADER:  # the form's hidden key was tampered with: a new one, and say so
            context["values"][KEY_FIELD] = new_form_key()
            errors = {"": f"This form's one-time key was not usable ({exc.message}); press Send again."}
        failure = None if "" not in errors or exc.code == "validation_error" else exc.details()
        status = 422 if exc.code in {"validation_error", "not_found"} else 502
        return _form(request, session, context, errors=errors, failure=failure, status=status)
    # POST/redirect/GET: reloading the run's page never posts the form again.
    return redirect(f"/runs/{run.id}", flash=_outcome(run, replayed=started.replayed))


def _start(services: Services, request: SendEmailRequest, key: str | None) -> Started:
    claim = None
    if key is not None:
        claim = IdempotencyClaim.of(WEB_SEND_SCOPE, key, request.model_dump(mode="json", by_alias=True))
    return services.idempotency.start_send_email(
        request, claim, check=lambda: services.sending.check(request)
    )


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


def _outcome(run: RunPublic, *, replayed: bool) -> str:
    """The run's outcome in a sentence, shown at the top of its page."""
    before = "This form was already sent; nothing was sent again. " if replayed else ""
    step = run.steps[0] if run.steps else None
    if run.status == RunStatus.SUCCEEDED and step is not None and step.output is not None:
        result = SendResult.model_validate(step.output)
        accepted = sum(r.status == "accepted" for r in result.recipients)
        total = len(result.recipients)
        verb = "Sent" if result.status == "sent" else f"Sent to {accepted} of {total} recipients"
        return f"{before}{verb}: Message-ID {result.message_id} via “{result.target}”."
    if run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        error = (step.error if step else None) or run.error or {}
        return f"{before}Not sent: {error.get('message', f'the run {run.status}')}"
    return f"{before}The message is {run.status}; this page shows how it goes."
