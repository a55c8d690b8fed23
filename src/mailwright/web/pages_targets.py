"""Targets: list, New Target (with Add New for account keys), detail, edit, delete, test."""

from __future__ import annotations

import enum
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from mailwright.domain.validation import validate_model
from mailwright.plugins import TargetType, target_type, target_types
from mailwright.services.common import clean_name
from mailwright.services.target_public import TargetPublic
from mailwright.services.targets import TargetCreate, TargetUpdate
from mailwright.targets.fields import SettingField, setting_fields
from mailwright.web import forms
from mailwright.web.deletion import Deletable, confirm_page, delete_confirmed
from mailwright.web.deps import ServicesDep
from mailwright.web.form_errors import FormErrors
from mailwright.web.key_fields import key_fields, key_type_options
from mailwright.web.render import redirect, render
from mailwright.web.roles import AdminSession, OperatorSession, ViewerSession
from mailwright.web.session import SessionDep, check_csrf

router = APIRouter(include_in_schema=False)


def _types() -> list[TargetType]:
    return target_types()  # registration order: the built-in SMTP first, the default


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _form_values(item: SettingField, value: Any) -> dict[str, str]:
    """What the form shows for one setting: a checkbox is "on" or blank (inverted ones the other way)."""
    if item.kind == "flag":
        on = bool(value) != bool(item.form_flag)
        return {item.form_flag or item.name: "on" if on else ""}
    return {item.name: _text(value)}


def _defaults() -> dict[str, str]:
    """A new target's form: the first type's defaults, then every other field's own."""
    types = _types()
    first = types[0]
    values = {"target_type": first.name, "no_account_keys": "false"}
    for item in reversed(setting_fields(types)):
        values.update(_form_values(item, item.default))
    for name, value in first.form_defaults.items():
        values[name] = _text(value)
    return values


def _form_context(services: ServicesDep) -> dict[str, Any]:
    types = _types()
    presets = {t.name: {p.key: p.as_dict() for p in t.presets.values()} for t in types}
    form_types = {
        t.name: {
            "protocol": t.protocol,
            "defaults": {k: _text(v) for k, v in t.form_defaults.items()},
            "linked": t.linked_values,
        }
        for t in types
    }
    fields = setting_fields(types)
    return {
        "target_types": types,
        "type_options": [(t.name, t.label) for t in types],
        "protocols": {t.name: t.protocol for t in types},
        "all_types": [t.name for t in types],
        "setting_fields": fields,
        "account_keys": services.account_keys.list_all(),
        "key_fields": key_fields(),
        "key_types": key_type_options(),
        "presets": presets,
        "presets_json": json.dumps({"presets": presets, "types": form_types}).replace("<", "\\u003c"),
    }


def _values_from(target: TargetPublic) -> dict[str, str]:
    values = {
        "target_type": target.type,
        "display_name": target.display_name,
        "description": target.description,
        "no_account_keys": "true" if target.no_account_keys else "false",
        "account_key": target.account_key_id or "",
    }
    settings = target.settings
    for item in setting_fields(_types()):
        if item.applies_to(target.type):
            values.update(_form_values(item, settings.get(item.name)))
    return values


def _labels(kind: str) -> dict[str, str]:
    """The form's labels by field name, for its error messages."""
    protocol = _protocol(kind)
    labels = {
        "target_type": "Target Type",
        "display_name": "Display Name",
        "description": "Description",
        "no_account_keys": "No Account Keys",
        "account_key": "Default Account Keys",
    }
    for item in setting_fields(_types()):
        label = item.label_for(protocol).replace(" (seconds)", "").replace("(PEM path on the server)", "")
        labels[item.name] = label.strip()
    return labels


def _protocol(kind: str) -> str:
    return next((t.protocol for t in _types() if t.name == kind), "")


def _fields(form: FormData, kind: str, errors: FormErrors, *, editing: bool = False) -> dict[str, Any]:
    """The settings the form posted that the target type has (another type's hidden inputs are ignored).

    On an edit, a blank optional text clears the setting and a blank rate removes the limit.
    A value that cannot be read is an error in `errors`, and left out.
    """
    no_keys = forms.text(form, "no_account_keys").lower() == "true"
    values: dict[str, Any] = {
        "description": forms.text(form, "description"),
        "no_account_keys": no_keys,
        "account_key": None if no_keys else forms.optional(form, "account_key"),
    }
    for item in setting_fields(_types()):
        if item.applies_to(kind):
            with errors.check():
                values[item.name] = _posted(form, item, kind, editing=editing)
            if item.required and values.get(item.name) in (None, "") and item.name not in errors:
                errors.missing(item.name)
    return values


def _posted(form: FormData, item: SettingField, kind: str, *, editing: bool) -> Any:
    if item.kind == "flag":
        return forms.boolean(form, item.form_flag or item.name) != bool(item.form_flag)
    if item.kind in ("integer", "number"):
        label = item.label_for(_protocol(kind)).replace(" (seconds)", "")
        value = forms.number(form, item.name, label=label, integer=item.kind == "integer")
        return 0 if value is None and editing and item.zero_clears else value
    if editing and item.blank_clears:
        return forms.text(form, item.name)
    return forms.optional(form, item.name)


def _check_form(
    form: FormData, kind: TargetType, errors: FormErrors, *, base: dict[str, Any], editing: bool
) -> dict[str, Any]:
    """Every check of the posted form, each error kept: the name, each setting, the settings
    together (`base`: the stored ones of an edited target), and the account key."""
    if not forms.text(form, "display_name"):
        errors.missing("display_name")
    with errors.check():
        clean_name(forms.text(form, "display_name"), field="display_name", what="target")
    fields = _fields(form, kind.name, errors, editing=editing)
    settings = {
        k: v for k, v in fields.items() if k in kind.settings_model.model_fields and v not in (None, "")
    }
    with errors.check():
        validate_model(kind.settings_model, {**base, **settings})
    if not errors:
        with errors.check():  # what the values imply together (security for a port…)
            kind.settings_from_input({**base, **settings}, None)
    if not fields["no_account_keys"] and not fields["account_key"]:
        errors.put(
            "account_key",
            "choose a default account key (Add New makes one), or set No Account Keys to True "
            "for an open relay that needs no login",
        )
    return fields


def _form_page(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    *,
    values: dict[str, str],
    target: TargetPublic | None = None,
    errors: FormErrors | None = None,
) -> HTMLResponse:
    return render(
        request,
        "targets/form.html",
        session=session,
        section="targets",
        mode="new" if target is None else "edit",
        target=target,
        values=values,
        errors=errors.by_field if errors else {},
        status_code=422 if errors else 200,
        **_form_context(services),
    )


@router.get("/targets")
def list_targets(request: Request, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request, "targets/list.html", session=session, section="targets", targets=services.targets.list_all()
    )


@router.get("/targets/new")
def new_target(request: Request, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    return _form_page(request, services, session, values=_defaults())


@router.post("/targets/new")
async def create_target(request: Request, services: ServicesDep, session: AdminSession) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    kind = next((t for t in _types() if t.name == forms.text(form, "target_type")), None)
    errors = FormErrors(_labels(kind.name if kind else ""))
    if kind is None:
        errors.put("target_type", "choose a Target Type")
        return _form_page(request, services, session, values=forms.values(form), errors=errors)
    fields = _check_form(form, kind, errors, base={}, editing=False)
    if not errors:
        with errors.check():
            target = services.targets.create(
                validate_model(
                    TargetCreate,
                    {
                        "display_name": forms.text(form, "display_name"),
                        "type": kind.name,
                        **{k: v for k, v in fields.items() if v is not None},
                    },
                )
            )
    if errors:
        return _form_page(request, services, session, values=forms.values(form), errors=errors)
    return redirect(f"/targets/{target.id}", flash=f"Target {target.display_name!r} created.")


def _detail_context(target: TargetPublic) -> dict[str, Any]:
    return {"target": target, "view": target.view()}


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
    errors = FormErrors(_labels(target.type))
    # Blank optional settings are cleared on edit: "" and 0 ("no limit") are given, None is "unchanged".
    fields = _check_form(form, target_type(target.type), errors, base=target.settings, editing=True)
    if not errors:
        with errors.check():
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
    if errors:
        return _form_page(request, services, session, values=forms.values(form), target=target, errors=errors)
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
