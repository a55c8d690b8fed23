"""The registry of target types (and later activities): plugins declare, the registry refuses duplicates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.targets.report import ConnectionTestReport


@dataclass(frozen=True, slots=True)
class Preset:
    """Provider settings kept as data (Gmail: smtp.gmail.com, 465 ssl or 587 starttls…)."""

    key: str
    label: str
    settings: dict[str, Any]
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    help_url: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "settings": self.settings,
            "alternatives": self.alternatives,
            "note": self.note,
            "help_url": self.help_url,
        }


@dataclass(frozen=True, slots=True)
class TargetType:
    """A kind of target: its name in documents, label in the UI, settings model and test.

    `settings_from_input(values, preset)` applies the preset and the defaults the port
    implies, and validates; `run_test(settings, target_name=..., login=...)` connects.
    """

    name: str
    label: str
    protocol: str
    settings_model: type[BaseModel]
    account_key_types: tuple[str, ...]
    settings_from_input: Callable[[dict[str, Any], Preset | None], BaseModel]
    run_test: Callable[..., Awaitable[ConnectionTestReport]]
    presets: dict[str, Preset] = field(default_factory=dict)

    def preset(self, key: str) -> Preset:
        found = self.presets.get(key.lower())
        if found is None:
            known = ", ".join(sorted(self.presets)) or "none"
            raise ValidationError(
                f"unknown preset {key!r} for {self.label} targets; known: {known}", field="preset"
            )
        return found


_TARGET_TYPES: dict[str, TargetType] = {}

T = TypeVar("T", bound=TargetType)


def register_target_type(target_type: T) -> T:
    if target_type.name in _TARGET_TYPES:
        raise ValueError(f"target type {target_type.name!r} is already registered")
    _TARGET_TYPES[target_type.name] = target_type
    return target_type


def target_type(name: str) -> TargetType:
    _load_builtin()
    found = _TARGET_TYPES.get(name.lower())
    if found is None:
        known = ", ".join(sorted(_TARGET_TYPES))
        raise ValidationError(f"unknown target type {name!r}; known: {known}", field="type")
    return found


def target_types() -> list[TargetType]:
    _load_builtin()
    return list(_TARGET_TYPES.values())


@dataclass(frozen=True, slots=True)
class ActivitySpec:
    """An activity a workflow step can run: its name in documents, input model and code."""

    name: str
    label: str
    input_model: type[BaseModel]
    execute: Callable[..., Awaitable[dict[str, Any]]]
    uses_target: bool = True
    description: str = ""


_ACTIVITIES: dict[str, ActivitySpec] = {}


def register_activity(spec: ActivitySpec) -> ActivitySpec:
    if spec.name in _ACTIVITIES:
        raise ValueError(f"activity {spec.name!r} is already registered")
    _ACTIVITIES[spec.name] = spec
    return spec


def activity(name: str) -> ActivitySpec:
    _load_builtin()
    found = _ACTIVITIES.get(name)
    if found is None:
        known = ", ".join(sorted(_ACTIVITIES))
        raise ValidationError(f"unknown activity {name!r}; known: {known}", field="activity")
    return found


def activities() -> list[ActivitySpec]:
    _load_builtin()
    return list(_ACTIVITIES.values())


def _load_builtin() -> None:
    # Importing the modules registers them; done lazily so that importing the
    # registry never drags every protocol library in.
    import mailwright.activities
    import mailwright.targets  # noqa: F401
