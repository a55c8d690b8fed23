"""Deleting with a confirmation page, the same way for every kind of object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from mailwright.errors import MailwrightError
from mailwright.services.web_auth import WebSession
from mailwright.web import forms
from mailwright.web.render import redirect, render
from mailwright.web.session import check_csrf


@dataclass(frozen=True, slots=True)
class Deletable:
    section: str  # the navigation entry, e.g. "targets"
    what: str  # "target", "account key", "workflow"
    name: str
    id: str
    listing: str  # where to go after deleting, e.g. "/targets"
    back: str  # where Cancel leads

    @property
    def action(self) -> str:
        return f"{self.listing}/{self.id}/delete"


def confirm_page(
    request: Request, session: WebSession, item: Deletable, *, error: str | None = None, status: int = 200
) -> HTMLResponse:
    return render(
        request,
        "confirm_delete.html",
        session=session,
        section=item.section,
        what=item.what,
        name=item.name,
        action=item.action,
        back=item.back,
        error=error,
        status_code=status,
    )


async def delete_confirmed(
    request: Request, session: WebSession, item: Deletable, delete: Callable[[str], None]
) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    try:
        delete(item.id)
    except MailwrightError as exc:  # refused (in use): say why, on the same page
        return confirm_page(request, session, item, error=str(exc), status=409)
    return redirect(item.listing, flash=f"{item.what.capitalize()} {item.name!r} deleted.")
