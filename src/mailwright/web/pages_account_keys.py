"""Account Keys: list, create (also from the New Target dialog), edit, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import FormData

from mailwright.domain.validation import validate_model
from mailwright.errors import MailwrightError
from mailwright.plugins import AccountKeyType, account_key_type
from mailwright.services.account_keys import AccountKeyCreate, AccountKeyPublic, AccountKeyUpdate
from mailwright.services.common import clean_name
from mailwright.web import forms
from mailwright.web.deletion import Deletable, confirm_page, delete_confirmed
from mailwright.web.deps import ServicesDep
from mailwright.web.form_errors import FormErrors
from mailwright.web.key_fields import key_fields, key_type_options, label_of, secret_names, values_from
from mailwright.web.render import field_errors, redirect, render
from mailwright.web.roles import AdminSession, ViewerSession
from mailwright.web.session import check_csrf

router = APIRouter(include_in_schema=False)


def _labels(kind: AccountKeyType) -> dict[str, str]:
    """The form's labels by field name, for its error messages."""
    fields = {name: label_of(kind, name) for name in kind.fields_model.model_fields}
    return {"name": "Name", "description": "Description", "key_type": "Key Type", **fields}


def _create_model(form: FormData, errors: FormErrors) -> AccountKeyCreate | None:
    """The new key as posted, or None with every problem of the form in `errors`."""
    kind = account_key_type(forms.text(form, "key_type") or "email_credentials")
    values = values_from(form, kind, updating=False)
    if not forms.text(form, "name"):
        errors.missing("name")
    with errors.check():
        clean_name(forms.text(form, "name"), field="name", what="account key")
    with errors.check():
        validate_model(kind.fields_model, values)
    if kind.prompt_secret and kind.prompt_secret not in values:
        errors.missing(kind.prompt_secret)
    if errors:
        return None
    with errors.check():
        return validate_model(
            AccountKeyCreate,
            {
                "name": forms.text(form, "name"),
                "type": kind.name,
                "description": forms.text(form, "description"),
                **values,
            },
        )
    return None


def _create(services: ServicesDep, form: FormData) -> tuple[AccountKeyPublic | None, FormErrors]:
    """Create the key the form describes; None and the form's errors if it cannot be."""
    kind = account_key_type(forms.text(form, "key_type") or "email_credentials")
    errors = FormErrors(_labels(kind))
    model = _create_model(form, errors)
    if model is None:
        return None, errors
    with errors.check():
        return services.account_keys.create(model), errors
    return None, errors


def _form_page(request: Request, session: Any, **context: Any) -> HTMLResponse:
    status = context.pop("status_code", 200)
    return render(
        request,
        "account_keys/form.html",
        session=session,
        section="account_keys",
        key_fields=key_fields(),
        key_types=key_type_options(),
        status_code=status,
        **context,
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
def new_key(request: Request, session: AdminSession, type: str = "email_credentials") -> HTMLResponse:
    kind = account_key_type(type)
    return _form_page(request, session, mode="new", values={"key_type": kind.name}, errors={})


@router.post("/account-keys/new")
async def create_key(request: Request, services: ServicesDep, session: AdminSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    key, errors = _create(services, form)
    if key is None:
        return _form_page(
            request,
            session,
            mode="new",
            values=forms.values(form, exclude=secret_names()),
            errors=errors.by_field,
            status_code=422,
        )
    return redirect("/account-keys", flash=f"Account key {key.name!r} created.")


@router.post("/account-keys/new.json")
async def create_key_json(request: Request, services: ServicesDep, session: AdminSession) -> JSONResponse:
    """The Add New dialog of the target form: create without leaving the form."""
    form = await request.form()
    check_csrf(session, request.headers.get("x-csrf-token") or forms.optional(form, "csrf_token"))
    key, errors = _create(services, form)
    if key is None:
        # Every error at once, by field, in the order found (the dialog lists them, and marks each field).
        return JSONResponse({"errors": errors.by_field}, status_code=422)
    body: dict[str, Any] = {
        "id": key.id,
        "name": key.name,
        "username": key.username,
        "type": key.type,
        "type_label": key.type_label,
        "authorized": key.authorized,
    }
    return JSONResponse(body, status_code=201)


@router.get("/account-keys/{ref}/edit")
def edit_key(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    key = services.account_keys.get(ref)
    values = {
        "key_type": key.type,
        "name": key.name,
        "username": key.username,
        "sender": key.sender or "",
        "description": key.description,
        **{k: "" if v is None else str(v) for k, v in key.settings.items()},
    }
    return _form_page(request, session, mode="edit", key=key, values=values, errors={})


@router.post("/account-keys/{ref}/edit")
async def update_key(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    key = services.account_keys.get(ref)
    try:
        values = values_from(form, account_key_type(key.type), updating=True)
        key = services.account_keys.update(
            key.id,
            validate_model(
                AccountKeyUpdate,
                {"name": forms.text(form, "name"), "description": forms.text(form, "description"), **values},
            ),
        )
    except MailwrightError as exc:
        return _form_page(
            request,
            session,
            mode="edit",
            key=key,
            values={"key_type": key.type, **forms.values(form, exclude=secret_names())},
            errors=field_errors(exc, _labels(account_key_type(key.type))),
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
