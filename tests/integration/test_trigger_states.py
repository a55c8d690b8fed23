"""Trigger states without a mail server: starting, paused when no worker watches, disabled, heartbeat."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from mailwright.storage.tables import TriggerStateRow, utcnow

DOCUMENT = """\
name: Watch
triggers: [{type: email, target: Inbox}]
steps: [{id: s, activity: set_variables, with: {x: "{{ trigger.message.subject }}"}}]
"""


def test_a_trigger_nobody_watches_shows_paused_with_the_reason(mw: Services) -> None:
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "Inbox",
                "type": "imap",
                "server": "127.0.0.1",
                "port": 993,
                "no_account_keys": True,
            }
        )
    )
    workflow = mw.workflows.create(DOCUMENT)
    (state,) = mw.triggers.list_all(workflow.id)
    assert (state.status, state.error) == ("starting", None)

    with mw.db.session() as session:  # three minutes without a worker
        session.execute(update(TriggerStateRow).values(updated_at=utcnow() - timedelta(minutes=3)))
    (state,) = mw.triggers.list_all(workflow.id)
    assert state.status == "paused"
    assert state.error is not None and "`mailwright serve` or `mailwright worker`" in state.error

    (plan,) = mw.triggers.plans()
    mw.triggers.heartbeat([plan.state_id])  # a watcher is alive again
    assert mw.triggers.list_all(workflow.id)[0].status == "starting"

    mw.triggers.set_enabled(workflow.name, 0, False)
    assert mw.triggers.list_all(workflow.id)[0].status == "disabled"
    assert mw.triggers.plans() == []
