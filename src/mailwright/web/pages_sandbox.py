"""Sandbox mailbox: what the embedded capture server received, shown safely."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from mailwright.sandbox import SandboxStore, safe_html
from mailwright.web import forms
from mailwright.web.render import redirect, render
from mailwright.web.roles import OperatorSession, ViewerSession
from mailwright.web.session import check_csrf

router = APIRouter(include_in_schema=False)

# The mail's HTML runs in an opaque-origin iframe: no scripts, no remote loads, no forms.
MAIL_CSP = "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; font-src data:; sandbox"


def get_store(request: Request) -> SandboxStore:
    store: SandboxStore = request.app.state.sandbox_store
    return store


StoreDep = Annotated[SandboxStore, Depends(get_store)]


@router.get("/sandbox")
def mailbox(request: Request, store: StoreDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request,
        "sandbox/list.html",
        session=session,
        section="sandbox",
        messages=store.list(limit=200),
        count=store.count(),
        capture=request.app.state.sandbox_address,
    )


@router.get("/sandbox/{message_id}")
def message(request: Request, message_id: str, store: StoreDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request, "sandbox/detail.html", session=session, section="sandbox", message=store.get(message_id)
    )


@router.get("/sandbox/{message_id}/html")
def message_html(message_id: str, store: StoreDep, session: ViewerSession) -> HTMLResponse:
    html = store.get(message_id).parsed.html or ""
    return HTMLResponse(
        safe_html(html),
        headers={
            "Content-Security-Policy": MAIL_CSP,
            "Cache-Control": "no-store",
            "X-Frame-Options": "SAMEORIGIN",
        },
    )


@router.get("/sandbox/{message_id}/raw")
def message_raw(message_id: str, store: StoreDep, session: ViewerSession) -> Response:
    return Response(
        store.raw(message_id),
        media_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{message_id}.eml"'},
    )


@router.get("/sandbox/{message_id}/attachments/{index}")
def attachment(message_id: str, index: int, store: StoreDep, session: ViewerSession) -> Response:
    filename, content_type, data = store.attachment(message_id, index)
    return Response(
        data,
        # Downloaded, never rendered: an attached HTML file must not run in our origin.
        media_type=content_type
        if content_type.startswith(("image/", "application/pdf"))
        else "application/octet-stream",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"},
    )


@router.post("/sandbox/clear")
async def clear(request: Request, store: StoreDep, session: OperatorSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    removed = store.clear()
    return redirect("/sandbox", flash=f"Removed {removed} captured message{'s' if removed != 1 else ''}.")
