"""test_target: the connection test as a workflow step; a failed test fails the step."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from mailwright.activities.context import ActivityContext
from mailwright.errors import TargetError
from mailwright.plugins import ActivitySpec, register_activity


class TestTargetInput(BaseModel):
    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid")

    target: str = ""


async def execute(ctx: ActivityContext, inputs: TestTargetInput) -> dict[str, Any]:
    report = await ctx.targets.test(inputs.target or ctx.require_target("test_target"))
    if not report.ok:
        error = report.error or {}
        failure = TargetError(
            str(error.get("message", "the connection test failed")),
            target=report.target,
            hint=error.get("hint"),
        )
        failure.stage = error.get("stage")
        raise failure
    return report.as_dict()


SPEC = register_activity(
    ActivitySpec(
        name="test_target",
        label="Test Target",
        input_model=TestTargetInput,
        execute=execute,
        description="Connect, TLS, EHLO, AUTH, QUIT; fails when the target is misconfigured.",
    )
)
