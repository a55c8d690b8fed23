"""Account Keys: list, create (also from the New Target dialog), edit, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import FormData

from mailwright.domain.validation import validate_model
from mailwright.errors import MailwrightError, ValidationError
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate, AccountKeyPublic, AccountKeyUpdate
from mailwright.web import forms
from mailwright.web.deletion import Deletable, confirm_page, delete_confirmed
from mailwright.web.deps import ServicesDep
from mailwright.web.render import field_errors, redirect, render
from mailwright.web.roles import AdminSession, ViewerSession
from mailwright.web.session import check_csrf

router = APIRouter(include_in_schema=False)
SECRET_FIELDS = ("password",)


def _create_model(form: FormData) -> AccountKeyCreate:
    password = form.get("password")
    if not isinstance(password, str) or not password:
        raise ValidationError("the password is required", field="password")
    return validate_model(
        AccountKeyCreate,
        {
            "name": forms.text(form, "name"),
            "username": forms.text(form, "username"),
            "password": Secret(password),
            "sender": forms.optional(form, "sender"),
            "description": forms.text(form, "description"),
        },
    )


@router.get("/account-keys")
def list_keys(request: Request, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request,
        "account_keys/list.html",
        session=session,
        section="account_keys",
        keys=services.account_keys.list_all(),
    )


@router.get("/account-keys/new")
def new_key(request: Request, session: AdminSession) -> HTMLResponse:
    return render(
        request,
        "account_keys/form.html",
        session=session,
        section="account_keys",
        mode="new",
        values={},
        errors={},
    )


@router.post("/account-keys/new")
async def create_key(request: Request, services: ServicesDep, session: AdminSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    try:
        key = services.account_keys.create(_create_model(form))
    except MailwrightError as exc:
        return render(
            request,
            "account_keys/form.html",
            session=session,
            section="account_keys",
            mode="new",
            values=forms.values(form, exclude=SECRET_FIELDS),
            errors=field_errors(exc),
            status_code=422,
        )
    return redirect("/account-keys", flash=f"Account key {key.name!r} created.")


@router.post("/account-keys/new.json")
async def create_key_json(request: Request, services: ServicesDep, session: AdminSession) -> JSONResponse:
    """The Add New dialog of the target form: create without leaving the form."""
    form = await request.form()
    check_csrf(session, request.headers.get("x-csrf-token") or forms.optional(form, "csrf_token"))
    try:
        key = services.account_keys.create(_create_model(form))
    except MailwrightError as exc:
        return JSONResponse({"errors": field_errors(exc)}, status_code=422)
    body: dict[str, Any] = {"id": key.id, "name": key.name, "username": key.username}
    return JSONResponse(body, status_code=201)


@router.get("/account-keys/{ref}/edit")
def edit_key(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    key = services.account_keys.get(ref)
    values = {
        "name": key.name,
        "username": key.username,
        "sender": key.sender or "",
        "description": key.description,
    }
    return render(
        request,
        "account_keys/form.html",
        session=session,
        section="account_keys",
        mode="edit",
        key=key,
        values=values,
        errors={},
    )


@router.post("/account-keys/{ref}/edit")
async def update_key(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    key = services.account_keys.get(ref)
    password = form.get("password")
    try:
        key = services.account_keys.update(
            key.id,
            validate_model(
                AccountKeyUpdate,
                {
                    "name": forms.text(form, "name"),
                    "username": forms.text(form, "username"),
                    # Blank keeps the stored password.
                    "password": Secret(password) if isinstance(password, str) and password else None,
                    "sender": forms.text(form, "sender"),
                    "description": forms.text(form, "description"),
                },
            ),
        )
    except MailwrightError as exc:
        return render(
            request,
            "account_keys/form.html",
            session=session,
            section="account_keys",
            mode="edit",
            key=key,
            values=forms.values(form, exclude=SECRET_FIELDS),
            errors=field_errors(exc),
            status_code=422,
        )
    return redirect("/account-keys", flash=f"Account key {key.name!r} saved.")


def _deletable(key: AccountKeyPublic) -> Deletable:
    return Deletable(
        section="account_keys",
        what="account key",
        name=key.name,
        id=key.id,
        listing="/account-keys",
        back="/account-keys",
    )


@router.get("/account-keys/{ref}/delete")
def confirm_delete(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    key = services.account_keys.get(ref)
    error = None
    if key.used_by:
        users = ", ".join(repr(u) for u in key.used_by)
        error = f"Account key {key.name!r} is used by {users}: choose another key for those targets first."
    return confirm_page(request, session, _deletable(key), error=error)


@router.post("/account-keys/{ref}/delete")
async def delete_key(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> Response:
    key = services.account_keys.get(ref)
    return await delete_confirmed(request, session, _deletable(key), services.account_keys.delete)
