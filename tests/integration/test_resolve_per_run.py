"""A run's execution resolves its target once for all its steps; the next execution resolves again.

Resolving reads the target and its key, validates the settings and decrypts the secret. A
workflow's steps (and the retries an execution waits for) share one resolution; a later claim
of the run (deferred, or `runs retry` after the key was fixed) sees the target as it is then.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailwright.plugins import register_target_type, unregister_target_type
from mailwright.services.app import Services
from mailwright.services.targets import ResolvedTarget, TargetCreate, TargetUpdate


@pytest.fixture
def recording() -> Iterator[None]:
    from tests.plugins.recording_target import RECORDING  # importing registers it

    unregister_target_type(RECORDING.name)
    register_target_type(RECORDING)
    yield
    unregister_target_type(RECORDING.name)


def _count_resolutions(mw: Services, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    resolve = mw.targets.resolve

    def counting(ref: str, *, account_key: str | None = None) -> ResolvedTarget:
        calls.append(ref)
        return resolve(ref, account_key=account_key)

    monkeypatch.setattr(mw.targets, "resolve", counting)
    return calls


def _three_sends(target: str) -> dict[str, Any]:
    def step(number: int) -> dict[str, Any]:
        fields = {"from": "robot@example.org", "to": ["a@example.org"], "subject": f"number {number}"}
        return {"id": f"s{number}", "activity": "send_email", "with": fields}

    return {"name": "Three", "target": target, "steps": [step(i) for i in range(3)]}


@pytest.mark.usefixtures("recording")
async def test_one_execution_resolves_its_target_once(
    mw: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "Recorder",
                "type": "recording",
                "directory": str(first),
                "no_account_keys": True,
            }
        )
    )
    workflow = mw.workflows.create(yaml.safe_dump(_three_sends("Recorder"), sort_keys=False))
    calls = _count_resolutions(mw, monkeypatch)
    executor = mw.executor(worker_id="t", lease=timedelta(seconds=5), with_files=False)

    run = mw.runs.start_workflow(workflow.id)
    assert await executor.execute(run.id) == "succeeded"
    assert calls == ["Recorder"]  # three steps, one resolution
    assert len((first / "sent.jsonl").read_text().splitlines()) == 3

    # Another run, after the target changed: resolved again, and sent where it now points.
    mw.targets.update("Recorder", TargetUpdate.model_validate({"directory": str(second)}))
    again = mw.runs.start_workflow(workflow.id)
    assert await executor.execute(again.id) == "succeeded"
    assert calls == ["Recorder", "Recorder"]
    assert len((second / "sent.jsonl").read_text().splitlines()) == 3
