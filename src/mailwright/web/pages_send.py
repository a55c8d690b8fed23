"""Send Email: a one-off message through a chosen target, with the per-recipient result."""

from __future__ import annotations

import asyncio
import base64
import mimetypes
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from mailwright.api.routes_workflows import wait_for_run
from mailwright.domain.validation import validate_model
from mailwright.errors import MailwrightError
from mailwright.services.sending import AttachmentIn, SendEmailRequest, SendResult
from mailwright.web import forms
from mailwright.web.deps import ServicesDep
from mailwright.web.render import field_errors, render
from mailwright.web.session import SessionDep, check_csrf

router = APIRouter(include_in_schema=False)


@router.get("/send")
def send_page(request: Request, services: ServicesDep, session: SessionDep, target: str = "") -> HTMLResponse:
    return render(
        request,
        "send.html",
        session=session,
        section="send",
        targets=services.targets.list_all(),
        values={"target": target},
        errors={},
        result=None,
        failure=None,
    )


@router.post("/send")
async def send(request: Request, services: ServicesDep, session: SessionDep) -> HTMLResponse:
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
        await asyncio.to_thread(services.sending.check, request_model)
        run = await asyncio.to_thread(services.runs.start_send_email, request_model)
        run = await wait_for_run(services, run.id, 180.0)
    except MailwrightError as exc:
        errors = field_errors(exc)
        failure = None if "" not in errors or exc.code == "validation_error" else exc.details()
        status = 422 if exc.code in {"validation_error", "not_found"} else 502
        return render(
            request,
            "send.html",
            session=session,
            section="send",
            errors=errors,
            result=None,
            failure=failure,
            status_code=status,
            **context,
        )
    step = run.steps[0]
    if run.status == "succeeded" and step.output is not None:
        result = SendResult.model_validate({**step.output, "run_id": run.id})
        return render(
            request,
            "send.html",
            session=session,
            section="send",
            errors={},
            result=result,
            failure=None,
            **context,
        )
    failure = step.error or run.error or {"message": f"the run is {run.status}; see the Runs page"}
    return render(
        request,
        "send.html",
        session=session,
        section="send",
        errors={},
        result=None,
        failure={**failure, "run_id": run.id},
        status_code=502 if run.status == "failed" else 202,
        **context,
    )
