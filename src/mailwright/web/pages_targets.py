"""Targets: list, New Target (with Add New for account keys), detail, edit, delete, test."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from mailwright.domain.smtp import Security
from mailwright.domain.validation import validate_model
from mailwright.errors import MailwrightError, ValidationError
from mailwright.plugins import target_types
from mailwright.services.targets import TargetCreate, TargetPublic, TargetUpdate
from mailwright.web import forms
from mailwright.web.deletion import Deletable, confirm_page, delete_confirmed
from mailwright.web.deps import ServicesDep
from mailwright.web.render import field_errors, redirect, render
from mailwright.web.roles import AdminSession, OperatorSession, ViewerSession
from mailwright.web.session import SessionDep, check_csrf

router = APIRouter(include_in_schema=False)

DEFAULTS = {
    "target_type": "smtp",
    "no_account_keys": "false",
    "port": "587",
    "security": "starttls",
    "connect_timeout": "10",
    "command_timeout": "60",
    # The SMTP connection pool's defaults (SMTPSettings), shown so the user sees what applies.
    "max_connections": "8",
    "max_messages_per_connection": "100",
    "idle_timeout": "30",
    "data_timeout": "600",
}

# SMTP sending limits and connection-pool settings: form name -> label (also in error messages).
LIMIT_LABELS = {
    "rate_per_second": "Rate per second",
    "rate_per_minute": "Rate per minute",
    "rate_per_day": "Rate per day",
    "max_connections": "Max connections",
    "max_messages_per_connection": "Max messages per connection",
    "idle_timeout": "Idle timeout",
    "data_timeout": "End-of-data timeout",
}
RATE_FIELDS = ("rate_per_second", "rate_per_minute", "rate_per_day")
SECONDS_FIELDS = ("idle_timeout", "data_timeout")  # the limits that take fractions


def _form_context(services: ServicesDep) -> dict[str, Any]:
    types = sorted(target_types(), key=lambda t: (t.name != "smtp", t.name))
    presets = {t.name: {p.key: p.as_dict() for p in t.presets.values()} for t in types}
    protocols = {t.name: t.protocol for t in types}
    return {
        "target_types": types,
        "type_options": [(t.name, t.label) for t in types],
        "account_keys": services.account_keys.list_all(),
        "securities": [s.value for s in Security],
        "presets": presets,
        "presets_json": json.dumps({"presets": presets, "protocols": protocols}).replace("<", "\\u003c"),
    }


def _values_from(target: TargetPublic) -> dict[str, str]:
    return {
        "target_type": target.type,
        "display_name": target.display_name,
        "description": target.description,
        "no_account_keys": "true" if target.no_account_keys else "false",
        "account_key": target.account_key_id or "",
        "server": target.server,
        "port": str(target.port),
        "security": target.security.value,
        "starttls_optional": "" if target.starttls_required else "on",
        "ca_file": target.ca_file or "",
        "disable_certificate_validation": "on" if target.disable_certificate_validation else "",
        "ehlo_name": target.ehlo_name or "",
        "connect_timeout": f"{target.connect_timeout:g}",
        "command_timeout": f"{target.command_timeout:g}",
        "polling_interval": f"{target.polling_interval:g}" if target.polling_interval else "",
        # Rates: blank is "no limit" (stored as None).
        **{name: str(getattr(target, name) or "") for name in RATE_FIELDS},
        "max_connections": _text(target.max_connections),
        "max_messages_per_connection": _text(target.max_messages_per_connection),
        "idle_timeout": _text(target.idle_timeout),
        "data_timeout": _text(target.data_timeout),
    }


def _text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _labelled(error: MailwrightError) -> MailwrightError:
    """Name a limit field by its label ("Max connections: …"), not its API name, in the form."""
    label = LIMIT_LABELS.get((error.field or "").split(".")[0])
    if label is None or not isinstance(error, ValidationError):
        return error
    message = re.sub(r"^[\w.]+: ", f"{label}: ", error.message)
    return ValidationError(message, hint=error.hint, field=error.field)


_ONLY_FOR = {
    "starttls_required": {"smtp"},
    "ehlo_name": {"smtp"},
    "polling_interval": {"imap", "pop3"},
    **{name: {"smtp"} for name in LIMIT_LABELS},
}


def _fields(form: FormData, kind: str) -> dict[str, Any]:
    """The settings the form posted that the target type has (SMTP has no polling interval…)."""
    return {k: v for k, v in _all_fields(form, kind).items() if kind in _ONLY_FOR.get(k, {kind})}


def _all_fields(form: FormData, kind: str) -> dict[str, Any]:
    no_keys = forms.text(form, "no_account_keys").lower() == "true"
    return {
        "description": forms.text(form, "description"),
        "server": forms.optional(form, "server"),
        "port": forms.number(form, "port", label="SMTP Port", integer=True),
        "security": forms.optional(form, "security"),
        "starttls_required": not forms.boolean(form, "starttls_optional"),
        "ca_file": forms.text(form, "ca_file") or None,
        "disable_certificate_validation": forms.boolean(form, "disable_certificate_validation"),
        "ehlo_name": forms.optional(form, "ehlo_name"),
        "connect_timeout": forms.number(form, "connect_timeout", label="Connect timeout"),
        "command_timeout": forms.number(form, "command_timeout", label="Command timeout"),
        "polling_interval": forms.number(form, "polling_interval", label="Polling interval"),
        # Parsed only for the types that have them: another type's hidden inputs never fail the form.
        **{
            name: forms.number(form, name, label=label, integer=name not in SECONDS_FIELDS)
            for name, label in LIMIT_LABELS.items()
            if kind in _ONLY_FOR[name]
        },
        "no_account_keys": no_keys,
        "account_key": None if no_keys else forms.optional(form, "account_key"),
    }


def _form_page(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    *,
    values: dict[str, str],
    target: TargetPublic | None = None,
    error: MailwrightError | None = None,
) -> HTMLResponse:
    return render(
        request,
        "targets/form.html",
        session=session,
        section="targets",
        mode="new" if target is None else "edit",
        target=target,
        values=values,
        errors=field_errors(_labelled(error)) if error else {},
        status_code=422 if error else 200,
        **_form_context(services),
    )


@router.get("/targets")
def list_targets(request: Request, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request, "targets/list.html", session=session, section="targets", targets=services.targets.list_all()
    )


@router.get("/targets/new")
def new_target(request: Request, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    return _form_page(request, services, session, values=DEFAULTS)


@router.post("/targets/new")
async def create_target(request: Request, services: ServicesDep, session: AdminSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    try:
        kind = forms.text(form, "target_type")
        if kind not in {t.name for t in target_types()}:
            raise ValidationError("choose a Target Type", field="target_type")
        fields = _fields(form, kind)
        target = services.targets.create(
            validate_model(
                TargetCreate,
                {
                    "display_name": forms.text(form, "display_name"),
                    "type": forms.text(form, "target_type"),
                    **{k: v for k, v in fields.items() if v is not None},
                },
            )
        )
    except MailwrightError as exc:
        return _form_page(request, services, session, values=forms.values(form), error=exc)
    return redirect(f"/targets/{target.id}", flash=f"Target {target.display_name!r} created.")


def _detail_context(target: TargetPublic) -> dict[str, Any]:
    return {"target": target, "rate_limits": target.rate_limits_text(), "pool": target.pool_text()}


@router.get("/targets/{ref}")
def show_target(request: Request, ref: str, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request,
        "targets/detail.html",
        session=session,
        section="targets",
        report=None,
        **_detail_context(services.targets.get(ref)),
    )


@router.post("/targets/{ref}/test")
async def test_target(
    request: Request, ref: str, services: ServicesDep, session: OperatorSession
) -> HTMLResponse:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    report = await services.targets.test(ref)
    return render(
        request,
        "targets/detail.html",
        session=session,
        section="targets",
        report=report.as_dict(),
        **_detail_context(services.targets.get(ref)),
    )


@router.get("/targets/{ref}/edit")
def edit_target(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    target = services.targets.get(ref)
    return _form_page(request, services, session, values=_values_from(target), target=target)


@router.post("/targets/{ref}/edit")
async def update_target(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    target = services.targets.get(ref)
    try:
        fields = _fields(form, target.type)
        # Blank optional settings are cleared on edit ("" becomes None in the settings).
        fields["ca_file"] = forms.text(form, "ca_file")
        if target.type == "smtp":
            fields["ehlo_name"] = forms.text(form, "ehlo_name")
            # A blank rate clears the limit: 0 is "no limit" in an update, None "unchanged".
            fields.update({name: 0 for name in RATE_FIELDS if fields.get(name) is None})
        target = services.targets.update(
            target.id,
            validate_model(
                TargetUpdate,
                {
                    "display_name": forms.text(form, "display_name"),
                    **{k: v for k, v in fields.items() if v is not None},
                },
            ),
        )
    except MailwrightError as exc:
        return _form_page(request, services, session, values=forms.values(form), target=target, error=exc)
    return redirect(f"/targets/{target.id}", flash=f"Target {target.display_name!r} saved.")


def _deletable(target: TargetPublic) -> Deletable:
    return Deletable(
        section="targets",
        what="target",
        name=target.display_name,
        id=target.id,
        listing="/targets",
        back=f"/targets/{target.id}",
    )


@router.get("/targets/{ref}/delete")
def confirm_delete(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    return confirm_page(request, session, _deletable(services.targets.get(ref)))


@router.post("/targets/{ref}/delete")
async def delete_target(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> Response:
    return await delete_confirmed(
        request, session, _deletable(services.targets.get(ref)), services.targets.delete
    )
