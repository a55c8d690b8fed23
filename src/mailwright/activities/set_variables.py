"""set_variables: name values (rendered expressions) for later steps: {{ steps.ID.output.NAME }}."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from mailwright.activities.context import ActivityContext
from mailwright.plugins import ActivitySpec, register_activity


class SetVariablesInput(BaseModel):
    model_config = ConfigDict(extra="allow")


async def execute(ctx: ActivityContext, inputs: SetVariablesInput) -> dict[str, Any]:
    return dict(inputs.model_extra or {})


SPEC = register_activity(
    ActivitySpec(
        name="set_variables",
        label="Set Variables",
        input_model=SetVariablesInput,
        execute=execute,
        uses_target=False,
        description="Keep values for later steps.",
    )
)
