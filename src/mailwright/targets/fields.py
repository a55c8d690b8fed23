"""The settings of the registered target types as fields: what the web form and the CLI offer.

Each field comes from a type's settings model: its annotation (text, number, whole
number, yes/no, a choice), its bounds and description, and optional keys in the
field's `json_schema_extra`:

- `label`: the form's label ("Rate per day"); "{protocol}" is replaced by the type's
  protocol ("{protocol} Server" reads "SMTP Server").
- `help`: the form's help line (else the description).
- `group`: where the form puts it: "main" (default), "limits" or "advanced".
- `form_flag`: the name of a checkbox that means the opposite (`starttls_optional` for
  `starttls_required`), with `flag_label` its label.
- `flag_help`, `off_flag`: the CLI's help of the inverted flag, and the name of a flag's
  "off" option in `targets update` (default `no_<name>`).
- `shortcut`: a CLI option that sets every setting naming it (`--timeout`).
- `choice_labels`: the form's words for a choice's values.
- `warn`: the form shows its help as a warning.
- `zero_clears`: 0 means "none" (a rate limit): a blank field in an edit sends 0.
- `blank_clears`: a blank text field in an edit clears the setting.
- `shown_when`: `{other field: value}`: the form shows it only while the other has that value
  (STARTTLS optional only with starttls security).

A field several types share (server, port…) is one field whose `types` lists them.
Nothing here imports a transport: the CLI builds its options from this.
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mailwright.plugins import TargetType

Kind = Literal["text", "number", "integer", "flag", "choice"]
Group = Literal["main", "limits", "advanced"]


@dataclass(slots=True)
class SettingField:
    name: str
    kind: Kind
    label: str  # may hold "{protocol}"
    help: str
    group: Group
    types: list[str] = field(default_factory=list)  # the type names that have it
    choices: list[str] = field(default_factory=list)
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    form_flag: str | None = None
    flag_label: str = ""
    flag_help: str = ""
    off_flag: str | None = None
    cli_help: str = ""
    shortcut: str | None = None
    choice_labels: dict[str, str] = field(default_factory=dict)
    warn: bool = False
    zero_clears: bool = False
    blank_clears: bool = False
    shown_when: tuple[str, str] | None = None  # (other field, value): the form shows it only then

    def label_for(self, protocol: str) -> str:
        return self.label.replace("{protocol}", protocol)

    @property
    def plain_label(self) -> str:
        """The label without a protocol ("Server" for "{protocol} Server")."""
        return self.label.replace("{protocol}", "").strip()

    def applies_to(self, kind: str) -> bool:
        return kind in self.types


def _kind(annotation: Any) -> tuple[Kind, list[str]]:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice", [str(m.value) for m in annotation]
    if annotation is bool:
        return "flag", []
    if annotation is int:
        return "integer", []
    if annotation is float:
        return "number", []
    return "text", []


def _bounds(info: FieldInfo) -> tuple[float | None, float | None, bool]:
    low: float | None = None
    high: float | None = None
    exclusive = False
    for meta in info.metadata:
        if getattr(meta, "ge", None) is not None:
            low = meta.ge
        if getattr(meta, "gt", None) is not None:
            low, exclusive = meta.gt, True
        if getattr(meta, "le", None) is not None:
            high = meta.le
    return low, high, exclusive


def _words(name: str) -> str:
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def _text(value: Any) -> str | None:
    return str(value) if value else None


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _when(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict) and len(value) == 1:
        ((name, wanted),) = value.items()
        return str(name), str(wanted)
    return None


def fields_of(model: type[BaseModel]) -> list[SettingField]:
    out: list[SettingField] = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kind, choices = _kind(info.annotation)
        low, high, exclusive = _bounds(info)
        out.append(
            SettingField(
                name=name,
                kind=kind,
                label=str(extra.get("label") or _words(name)),
                help=str(extra.get("help") or info.description or ""),
                group=extra.get("group", "main"),  # type: ignore[arg-type]
                choices=choices,
                required=info.is_required(),
                default=None if info.is_required() else info.default,
                minimum=low,
                maximum=high,
                exclusive_minimum=exclusive,
                form_flag=_text(extra.get("form_flag")),
                flag_label=str(extra.get("flag_label") or ""),
                flag_help=str(extra.get("flag_help") or ""),
                off_flag=_text(extra.get("off_flag")),
                cli_help=str(info.description or ""),
                shortcut=_text(extra.get("shortcut")),
                choice_labels=_labels(extra.get("choice_labels")),
                warn=bool(extra.get("warn")),
                zero_clears=bool(extra.get("zero_clears")),
                blank_clears=bool(extra.get("blank_clears")),
                shown_when=_when(extra.get("shown_when")),
            )
        )
    return out


def setting_fields(kinds: list[TargetType]) -> list[SettingField]:
    """Every registered type's settings, one field per name, in the order first seen."""
    merged: dict[str, SettingField] = {}
    for kind in kinds:
        for item in fields_of(kind.settings_model):
            known = merged.get(item.name)
            if known is None:
                item.types = [kind.name]
                merged[item.name] = item
            else:
                known.types.append(kind.name)
                known.required = known.required and item.required
    return list(merged.values())
