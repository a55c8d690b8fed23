"""The registry of target types (and later activities): plugins declare, the registry refuses duplicates."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from mailwright.errors import ConfigError, ValidationError

if TYPE_CHECKING:
    from mailwright.domain.capabilities import Mailbox, MailSender
    from mailwright.domain.connection_test import ConnectionTestReport
    from mailwright.secrets import Secret
    from mailwright.transport.base import Login


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
class TargetView:
    """How the faces show a target's settings: the same lines in the CLI and the web."""

    address: str  # where it points ("smtp.example.org:587"), in lists
    security: str = ""  # "ssl", "starttls", "none"; blank when the type has no such notion
    connection: list[tuple[str, str]] = field(default_factory=list)  # (label, text), first
    details: list[tuple[str, str]] = field(default_factory=list)  # (label, text), after the key
    warnings: list[str] = field(default_factory=list)  # said loudly wherever the target is shown
    flags: list[str] = field(default_factory=list)  # short notes beside it in lists


@dataclass(frozen=True, slots=True)
class TargetType:
    """A kind of target: everything about it, so that no other code needs to know its settings.

    - `settings_model`: a Pydantic model; its fields' metadata (description, bounds,
      `json_schema_extra` keys read by targets/fields.py) make the web form and the CLI's options.
    - `settings_from_input(values, preset)` applies the preset and the defaults the
      values imply, and validates.
    - `run_test(settings, target_name=..., login=...)` connects and reports.
    - `describe(settings, account_key=...)` gives the lines the faces show.
    - `sender(settings, target_id=..., target_name=..., login=...) -> MailSender`, when the
      type sends mail; `mailbox(settings, target_name=..., login=...)` an async context
      manager yielding an open `Mailbox`, when it holds mail (`mailbox_folders`: a
      `FolderMailbox` with folders and UIDs, else a `MessageDrop`).

    `form_defaults` and `linked_values` are data for the web form (see the fields below).
    A type module imports its transport inside these functions, never at import time:
    the CLI reads every registered type to build its options.
    """

    name: str
    label: str
    protocol: str
    settings_model: type[BaseModel]
    account_key_types: tuple[str, ...]
    settings_from_input: Callable[[dict[str, Any], Preset | None], BaseModel]
    run_test: Callable[..., Awaitable[ConnectionTestReport]]
    describe: Callable[..., TargetView]
    presets: dict[str, Preset] = field(default_factory=dict)
    sender: Callable[..., MailSender] | None = None
    mailbox: Callable[..., AbstractAsyncContextManager[Mailbox]] | None = None
    mailbox_folders: bool = False
    # Seconds between a mail trigger's looks at the mailbox when it cannot wait for news (IDLE).
    poll_seconds: Callable[[BaseModel], float] | None = None
    # The web form: values a new target of this type starts with, and values that follow
    # another's (a port brings its security mode): {field: {value: {other field: value}}}.
    form_defaults: dict[str, Any] = field(default_factory=dict)
    linked_values: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # What the type's account key needs from the target to log in (a Graph target's login URL).
    login_hints: Callable[[BaseModel], dict[str, Any]] | None = None
    # The From a message gets when neither the request nor the key's sender names one
    # (a Graph target sends as its mailbox); None: the key's username, if an address.
    default_sender: Callable[[BaseModel], str | None] | None = None

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


def unregister_target_type(name: str) -> None:
    """Forget a type (tests that register one of their own put the registry back)."""
    _TARGET_TYPES.pop(name, None)


def target_type(name: str) -> TargetType:
    _load_builtin("targets")
    found = _TARGET_TYPES.get(name.lower())
    if found is None:
        known = ", ".join(sorted(_TARGET_TYPES))
        raise ValidationError(f"unknown target type {name!r}; known: {known}", field="type")
    return found


def target_types() -> list[TargetType]:
    _load_builtin("targets")
    return list(_TARGET_TYPES.values())


def labels_of(types: list[TargetType]) -> str:
    """ "an IMAP or POP3 Endpoint target", "an SMTP Endpoint or Recording target": which types would do."""
    labels = [t.label for t in types]
    suffix = _shared_last_word(labels)
    if suffix:  # "IMAP Endpoint", "POP3 Endpoint": said once, at the end
        labels = [label.removesuffix(suffix) for label in labels]
    text = " or ".join([", ".join(labels[:-1]), labels[-1]] if len(labels) > 1 else labels) + suffix
    article = "an" if text[:1].lower() in "aeiou" or text[:4] in {"SMTP", "IMAP", "HTTP"} else "a"
    return f"{article} {text} target"


def _shared_last_word(labels: list[str]) -> str:
    """The last word all of several labels end with (" Endpoint"), or ""."""
    if len(labels) < 2:
        return ""
    last = labels[0].rpartition(" ")
    word = f" {last[2]}" if last[1] else ""
    return word if word and all(label.endswith(word) and label != word.strip() for label in labels) else ""


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """One stored account key, decrypted, as its type turns it into a `Login`.

    `settings` are the key's plain fields, `secrets` its write-only ones; `token_store`
    keeps an OAuth2 key's token cache (the services encrypt what it saves); `hints` come
    from the target the key logs in to (`TargetType.login_hints`: a Graph target's login URL).
    """

    key_id: str
    name: str
    settings: dict[str, Any]
    secrets: dict[str, Secret]
    token_store: TokenCacheStore
    hints: dict[str, Any] = field(default_factory=dict)


class TokenCacheStore(Protocol):
    """Where an OAuth2 key's token cache lives between processes (encrypted by the services)."""

    def load(self) -> str | None: ...

    def save(self, blob: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AccountKeyType:
    """A kind of account key: its fields (plain and secret) and how it logs in.

    - `fields_model`: a Pydantic model of every field; a field whose `json_schema_extra`
      has `"secret": True` is write-only (encrypted at rest, never shown), `"file": True`
      is read from a file by the CLI (a certificate). Its validators check the combination
      (a Graph key needs a client secret or a certificate).
    - `login(material) -> Login`: what a transport logs in with (a password, or a
      `TokenSource` for OAuth2 keys).
    - `username(settings)`: the mailbox the key logs in as, shown in lists ("" if none).
    - `authorize`: for keys that need a user's consent once (OAuth2 refresh tokens), the
      flow `mailwright account-keys authorize` runs; it returns the secrets to store.
    - `prompt_secret`: the secret the CLI asks for when none is given (the password).
    """

    name: str
    label: str
    fields_model: type[BaseModel]
    login: Callable[[KeyMaterial], Login]
    username: Callable[[dict[str, Any]], str]
    aliases: tuple[str, ...] = ()
    prompt_secret: str | None = None
    authorize: Callable[..., Awaitable[dict[str, str]]] | None = None
    description: str = ""

    def secret_fields(self) -> list[str]:
        return [name for name, info in self.fields_model.model_fields.items() if _extra(info).get("secret")]

    def plain_fields(self) -> list[str]:
        return [name for name in self.fields_model.model_fields if name not in self.secret_fields()]


def _extra(info: Any) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


_KEY_TYPES: dict[str, AccountKeyType] = {}


def register_account_key_type(key_type: AccountKeyType) -> AccountKeyType:
    if key_type.name in _KEY_TYPES:
        raise ValueError(f"account key type {key_type.name!r} is already registered")
    _KEY_TYPES[key_type.name] = key_type
    return key_type


def unregister_account_key_type(name: str) -> None:
    _KEY_TYPES.pop(name, None)


def account_key_type(name: str) -> AccountKeyType:
    """A key type by its name or an alias ("graph", "oauth2", "email")."""
    _load_builtin("keys")
    wanted = name.strip().lower().replace("-", "_")
    for found in _KEY_TYPES.values():
        if wanted == found.name or wanted in found.aliases:
            return found
    known = ", ".join(sorted(_KEY_TYPES))
    raise ValidationError(f"unknown account key type {name!r}; known: {known}", field="type")


def account_key_types() -> list[AccountKeyType]:
    _load_builtin("keys")
    return list(_KEY_TYPES.values())


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
    _load_builtin("activities")
    found = _ACTIVITIES.get(name)
    if found is None:
        known = ", ".join(sorted(_ACTIVITIES))
        raise ValidationError(f"unknown activity {name!r}; known: {known}", field="activity")
    return found


def activities() -> list[ActivitySpec]:
    _load_builtin("activities")
    return list(_ACTIVITIES.values())


PLUGINS_VARIABLE = "MAILWRIGHT_PLUGINS"
ENTRY_POINT_GROUP = "mailwright.plugins"
_loaded: set[str] = set()
_plugins_loaded = False


def _load_builtin(kind: str) -> None:
    """Register the built-in `kind` ("targets", "keys" or "activities"), then the plugins, once each.

    Importing the modules registers them; done lazily, and one kind at a time, so that
    importing the registry never drags every protocol library in, and building the CLI's
    options from the target types loads no activity.
    """
    global _plugins_loaded
    if kind in _loaded:
        return
    _loaded.add(kind)
    importlib.import_module(f"mailwright.{kind}")
    if _plugins_loaded:
        return
    _plugins_loaded = True
    load_plugins(os.environ.get(PLUGINS_VARIABLE, ""))
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def load_plugins(spec: str) -> None:
    """Import plugin modules: comma-separated module names or paths of .py files.

    A plugin registers its target types and activities when imported (as the
    built-in modules do). `MAILWRIGHT_PLUGINS` is read the first time the registry
    is used, so every process (CLI, server, worker) given the variable knows the
    same types; installed packages can instead declare an entry point in the
    `mailwright.plugins` group.
    """
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.endswith(".py"):
            _import_file(Path(item))
        elif item not in sys.modules:
            importlib.import_module(item)


def _import_file(path: Path) -> None:
    name = f"mailwright_plugin_{path.stem}"
    if name in sys.modules:
        return
    found = importlib.util.spec_from_file_location(name, path)
    if found is None or found.loader is None:
        raise ConfigError(f"{PLUGINS_VARIABLE}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module
    try:
        found.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
