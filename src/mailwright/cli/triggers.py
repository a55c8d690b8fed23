"""`mailwright triggers`: the email triggers of workflows, their state, and turning them on or off."""

from typing import TYPE_CHECKING, Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_json, print_table

if TYPE_CHECKING:
    from mailwright.services.triggers import TriggerPublic

app = typer.Typer(
    help="Email triggers: new mail in an IMAP folder or POP3 mailbox starts a workflow, once per mail.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
WorkflowArg = Annotated[str, typer.Argument(help="the workflow, by name or id")]
IndexOpt = Annotated[
    int, typer.Option("--index", "-i", min=0, help="which of the workflow's triggers (0 is the first)")
]


def _when(trigger: "TriggerPublic") -> str:
    return f"{trigger.last_checked_at:%Y-%m-%d %H:%M:%S}" if trigger.last_checked_at else "never"


def _status(trigger: "TriggerPublic") -> str:
    return f"errored: {trigger.error}" if trigger.status == "errored" and trigger.error else trigger.status


@app.command("list")
def list_triggers(
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="only this workflow's")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every email trigger: where it watches, its state (idle, polling, paused, errored...), its runs."""
    listed = services().triggers.list_all(workflow)
    if as_json:
        print_json(listed)
        return
    print_table(
        [
            "WORKFLOW",
            "#",
            "TARGET",
            "FOLDER",
            "STATUS",
            "AFTER SUCCESS",
            "RUNS",
            "FAILED",
            "WAITING",
            "CHECKED",
        ],
        [
            [
                t.workflow,
                t.index,
                t.target,
                t.folder,
                _status(t),
                t.after_success,
                t.runs_started,
                t.runs_failed,
                t.waiting,
                _when(t),
            ]
            for t in listed
        ],
    )


def _toggle(workflow: str, index: int, enabled: bool, as_json: bool) -> None:
    trigger = services().triggers.set_enabled(workflow, index, enabled)
    if as_json:
        print_json(trigger)
        return
    word = "enabled" if enabled else "disabled"
    typer.echo(
        f"trigger {trigger.index} of {trigger.workflow!r} ({trigger.target} / {trigger.folder}) {word}"
    )
    if enabled:
        typer.echo("a running worker (`mailwright serve` or `mailwright worker`) picks it up within seconds")


@app.command("enable")
def enable(workflow: WorkflowArg, index: IndexOpt = 0, as_json: JsonOpt = False) -> None:
    """Turn a trigger on. It takes mail from where it stopped (or, the first time, from now on)."""
    _toggle(workflow, index, True, as_json)


@app.command("disable")
def disable(workflow: WorkflowArg, index: IndexOpt = 0, as_json: JsonOpt = False) -> None:
    """Turn a trigger off. Mail that arrives meanwhile is taken when it is enabled again."""
    _toggle(workflow, index, False, as_json)


@app.command("messages")
def messages(
    workflow: WorkflowArg,
    index: Annotated[int | None, typer.Option("--index", "-i", min=0, help="only this trigger's")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The mail a workflow's triggers took (newest first): its run, its status, why it failed."""
    listed = services().triggers.messages(workflow, index, limit=limit)
    if as_json:
        print_json(listed)
        return
    print_table(
        ["#", "FOLDER", "KEY", "SUBJECT", "STATUS", "ATTEMPTS", "RUN", "ERROR"],
        [
            [
                m["trigger"],
                m["folder"],
                m["key"],
                m["subject"] or "",
                m["status"],
                m["attempts"],
                m["run_id"] or "-",
                m["error"] or "",
            ]
            for m in listed
        ],
    )
