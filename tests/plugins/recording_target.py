"""A test-only target type, "recording": what it is asked to send goes to a JSONL file.

It is one file on purpose: it proves that a target type which is not host and port
(here a directory) works through the CLI, the REST API, the web form and a
send_email step without any change outside this file. Load it in another process
with `MAILWRIGHT_PLUGINS=<path of this file>`; in this one, import it (importing
registers it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailwright.domain.capabilities import UNLIMITED, RateLimits, SendReport
from mailwright.domain.connection_test import ConnectionTestReport, ConnectionTestStep
from mailwright.domain.validation import validate_model
from mailwright.plugins import Preset, TargetType, TargetView, register_target_type, target_types

RECORDED = "sent.jsonl"


class RecordingSettings(BaseModel):
    """Where the messages are recorded: `<directory>/sent.jsonl`, one JSON object a line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: str = Field(
        description="directory the sent messages are recorded in (sent.jsonl)",
        json_schema_extra={"label": "Directory", "help": "Each message sent is appended to sent.jsonl here."},
    )

    @field_validator("directory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not Path(value).is_absolute():
            raise ValueError("give an absolute path")
        return value


def settings_from_input(values: dict[str, Any], preset: Preset | None) -> BaseModel:
    merged = {**(preset.settings if preset else {}), **{k: v for k, v in values.items() if v is not None}}
    return validate_model(RecordingSettings, merged)


def _settings(settings: BaseModel) -> RecordingSettings:
    assert isinstance(settings, RecordingSettings)
    return settings


async def run_test(settings: BaseModel, *, target_name: str, login: Any) -> ConnectionTestReport:
    directory = _settings(settings).directory
    ok = os.path.isdir(directory) and os.access(directory, os.W_OK)
    return ConnectionTestReport(
        ok=ok,
        target=target_name,
        protocol="JSONL",
        server=directory,
        port=0,
        security="none",
        account_key=login.key_name if login else None,
        steps=[ConnectionTestStep(name="open", ok=ok, ms=0.0)],
        error=None if ok else {"message": f"{directory} is not a writable directory", "hint": "create it"},
    )


def describe(settings: BaseModel, *, target_name: str, account_key: str | None) -> TargetView:
    directory = _settings(settings).directory
    return TargetView(address=directory, connection=[("Directory", directory), ("Protocol", "JSONL")])


class RecordingSender:
    """A `MailSender` that appends each message to the JSONL file instead of sending it."""

    rate_limits: RateLimits = UNLIMITED
    connections = 1
    closed = False

    def __init__(self, directory: str, target_name: str) -> None:
        self.where = directory
        self._path = Path(directory) / RECORDED
        self._target = target_name

    async def accepts_utf8(self) -> bool:
        return True

    async def send(
        self,
        *,
        sender: str,
        recipients: list[tuple[str, bool]],
        data: bytes,
        utf8: bool,
        continue_if_one_address_valid: bool,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> SendReport:
        started = time.perf_counter()
        if before_data is not None:
            await before_data()
        line = {
            "target": self._target,
            "sender": sender,
            "recipients": [address for address, _ in recipients],
            "data": data.decode("utf-8", "replace"),
        }
        await asyncio.to_thread(self._append, json.dumps(line) + "\n")
        return SendReport(
            recipients=[
                {"address": address, "status": "accepted", "code": 250, "reply": "recorded"}
                for address, _ in recipients
            ],
            code=250,
            reply="recorded",
            size=len(data),
            timings={"record": round((time.perf_counter() - started) * 1000, 2)},
        )

    def _append(self, text: str) -> None:
        with self._path.open("a", encoding="utf-8") as file:
            file.write(text)


def sender(settings: BaseModel, *, target_id: str, target_name: str, login: Any) -> RecordingSender:
    return RecordingSender(_settings(settings).directory, target_name)


RECORDING = TargetType(
    name="recording",
    label="Recording",
    protocol="JSONL",
    settings_model=RecordingSettings,
    account_key_types=("email_credentials",),
    settings_from_input=settings_from_input,
    run_test=run_test,
    describe=describe,
    sender=sender,
)

if RECORDING.name not in {t.name for t in target_types()}:
    register_target_type(RECORDING)
