"""The fields of the registered account-key types, as the web forms show them.

Made from each type's fields model (keys/): a secret field is a password box (blank
keeps the stored secret), a file field (a certificate) a text area for the PEM, an
enum a list, the rest text boxes. A plugin's key type gets its fields without a
change here.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field
from typing import Any, get_args

from starlette.datastructures import FormData

from mailwright.plugins import AccountKeyType, account_key_types, target_types
from mailwright.secrets import Secret


@dataclass
class KeyField:
    name: str
    label: str
    kind: str  # text, select, secret, pem
    help: str
    types: list[str] = field(default_factory=list)
    required_in: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)

    @property
    def only(self) -> str:
        return " ".join(self.types)


def _choices(annotation: Any) -> list[str]:
    for candidate in (annotation, *get_args(annotation)):
        if inspect.isclass(candidate) and issubclass(candidate, enum.Enum):
            return [str(member.value) for member in candidate]
    return []


def key_fields() -> list[KeyField]:
    """Every registered key type's fields, one per name, in the order first seen."""
    merged: dict[str, KeyField] = {}
    for kind in account_key_types():
        for name, info in kind.fields_model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            choices = _choices(info.annotation)
            shape = (
                "pem"
                if extra.get("file")
                else "secret"
                if extra.get("secret")
                else "select"
                if choices
                else "text"
            )
            label = str(extra.get("label") or name.replace("_", " ").capitalize())
            item = merged.setdefault(
                name, KeyField(name, label, shape, info.description or "", choices=choices)
            )
            item.types.append(kind.name)
            if info.is_required():
                item.required_in.append(kind.name)
    return list(merged.values())


def key_type_options() -> list[dict[str, Any]]:
    """Each key type, and the target types that accept it (the Add New dialog offers those)."""
    accepting = {
        k.name: [t.name for t in target_types() if k.name in t.account_key_types] for k in account_key_types()
    }
    return [
        {"name": k.name, "label": k.label, "description": k.description, "targets": accepting[k.name]}
        for k in account_key_types()
    ]


def values_from(form: FormData, kind: AccountKeyType, *, updating: bool) -> dict[str, Any]:
    """The type's fields as posted: a blank secret keeps the stored one; a blank plain field is
    "not given" on create and "clear it" on update (the type's validators decide what that means)."""
    secrets = set(kind.secret_fields())
    out: dict[str, Any] = {}
    for name in kind.fields_model.model_fields:
        raw = form.get(name)
        text = raw if isinstance(raw, str) else ""
        if name in secrets:
            if text.strip():
                out[name] = Secret(text if "BEGIN" in text else text.strip())
            continue
        text = text.strip()
        if text or updating:
            out[name] = text
    return out


def label_of(kind: AccountKeyType, name: str) -> str:
    info = kind.fields_model.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("label") or name.replace("_", " ").capitalize())


def secret_names() -> tuple[str, ...]:
    return tuple(f.name for f in key_fields() if f.kind in {"secret", "pem"})
