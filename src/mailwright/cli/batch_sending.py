"""`mailwright send-batch`, once the messages are stored: sending them here, with progress, and the summary.

Loaded only when the command runs (asyncio, Rich's progress bar and the engine are not
needed to list the command's options).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mailwright.domain.runs import RunStatus, StepStatus
from mailwright.engine.batch import BatchProgress

if TYPE_CHECKING:
    from mailwright.services.app import Services
    from mailwright.services.batches import BatchCreated
    from mailwright.services.runs import RunPublic

INTERRUPTED = "interrupted"  # stopped by Ctrl-C; the rest of the run stays queued
PLAIN_EVERY = 2.0  # seconds between progress lines when stderr is not a terminal
REFRESH = 0.2

# Steps whose message was not handed over (yet, or ever).
NOT_SENT = (
    StepStatus.PENDING,
    StepStatus.DEFERRED,
    StepStatus.RUNNING,
    StepStatus.SKIPPED,
    StepStatus.CANCELLED,
)


def send(
    svc: Services, created: BatchCreated, *, show: str, console: Console
) -> tuple[BatchProgress | None, str]:
    """Send the stored batch in this process: its progress and how it ended (a run status or INTERRUPTED)."""
    return asyncio.run(_execute(svc, created, show=show, console=console))


# --- sending ----------------------------------------------------------------------------


async def _execute(
    svc: Services, created: BatchCreated, *, show: str, console: Console
) -> tuple[BatchProgress | None, str]:
    """Run the batch here, as a worker would; if a running worker took it first, follow it."""
    executor = svc.waiting.inline_executor()
    live: list[BatchProgress] = []
    executor.on_batch_progress = live.append
    interrupted = _stop_on_ctrl_c(executor.stopping, console=console)
    drawing = asyncio.create_task(_draw(live, total=created.total, show=show, console=console))
    try:
        status: str | None = await executor.execute(created.run_id)
        if status == RunStatus.QUEUED and interrupted.is_set():
            status = INTERRUPTED
        if status is None:  # another worker (`serve`) claimed it: show its progress from the rows
            status = await _follow(svc, created, live)
    finally:
        drawing.cancel()
        await asyncio.gather(drawing, return_exceptions=True)
        await svc.pools.aclose()  # QUIT on the pooled connections before the loop ends
        if live:
            _final_line(live[0], show=show, console=console)
    return (live[0] if live else None), status


def _stop_on_ctrl_c(stopping: asyncio.Event, *, console: Console) -> asyncio.Event:
    """The first Ctrl-C stops the batch cleanly; a second one quits at once.

    Stopping cleanly: the messages being sent finish and are recorded, the rest go
    back to queued, and the run is released for `serve` or `worker` to finish.
    """
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        interrupted.set()
        stopping.set()
        loop.remove_signal_handler(signal.SIGINT)  # Python's own handler again: KeyboardInterrupt
        console.print(
            "stopping: the messages in flight finish, the rest stay queued (Ctrl-C again to quit now)"
        )

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals outside the main thread
        loop.add_signal_handler(signal.SIGINT, interrupt)
    return interrupted


async def _follow(svc: Services, created: BatchCreated, live: list[BatchProgress]) -> str:
    progress = BatchProgress(total=created.total)
    live.append(progress)

    def seen(run: RunPublic) -> None:
        counts = run.step_counts or {}
        progress.sent = counts.get(StepStatus.SUCCEEDED, 0)
        progress.failed = counts.get(StepStatus.FAILED, 0)
        progress.unknown = counts.get(StepStatus.UNKNOWN, 0)

    return (await svc.waiting.follow(created.run_id, seen=seen)).status


async def _draw(live: list[BatchProgress], *, total: int, show: str, console: Console) -> None:
    if show == "none":
        return
    while not live:
        await asyncio.sleep(REFRESH)
    progress = live[0]
    if show == "plain":
        while True:
            await asyncio.sleep(PLAIN_EVERY)
            console.print(_plain(progress))
    columns = (
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "sent {task.fields[sent]:,}  failed {task.fields[failed]:,}  unknown {task.fields[unknown]:,}  "
            "{task.fields[rate]:,.0f} msg/s"
        ),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("batch", total=total, sent=0, failed=0, unknown=0, rate=0.0)
        while True:
            bar.update(
                task,
                completed=progress.done,
                sent=progress.sent + progress.partial,
                failed=progress.failed,
                unknown=progress.unknown,
                rate=progress.rate,
            )
            await asyncio.sleep(REFRESH)


def _plain(progress: BatchProgress) -> str:
    eta = f", ETA {progress.eta:.0f} s" if progress.eta is not None and progress.done < progress.total else ""
    return (
        f"progress: {progress.done:,}/{progress.total:,}  sent {progress.sent + progress.partial:,}  "
        f"failed {progress.failed:,}  unknown {progress.unknown:,}  {progress.rate:,.0f} msg/s{eta}"
    )


def _final_line(progress: BatchProgress, *, show: str, console: Console) -> None:
    if show == "plain":
        console.print(_plain(progress))
    if progress.deferred_reason:
        console.print(f"[yellow]deferred:[/] {progress.deferred_reason}")
        console.print(
            "the rest is queued in the database: `mailwright serve` or `mailwright worker` sends it then"
        )


# --- the summary ------------------------------------------------------------------------


def summary(
    svc: Services, created: BatchCreated, progress: BatchProgress | None, *, status: str, stored: float
) -> dict[str, Any]:
    run = svc.runs.get(created.run_id)
    counts = run.step_counts or {}
    partial = progress.partial if progress else 0
    sent = max(0, counts.get(StepStatus.SUCCEEDED, 0) - partial)
    failed, unknown = counts.get(StepStatus.FAILED, 0), counts.get(StepStatus.UNKNOWN, 0)
    seconds = progress.elapsed if progress else 0.0
    if status == INTERRUPTED:
        shown = INTERRUPTED
    else:
        shown = run.status if status != RunStatus.QUEUED else "deferred" if run.not_before else run.status
    return {
        "run_id": created.run_id,
        "status": shown,
        "target": created.target,
        "total": created.total,
        "sent": sent,
        "partial": partial,
        "failed": failed,
        "unknown": unknown,
        "not_sent": sum(counts.get(s, 0) for s in NOT_SENT),
        "deferred_until": run.not_before.isoformat() if run.not_before else None,
        "error": run.error,
        "store_seconds": round(stored, 3),
        "send_seconds": round(seconds, 3),
        "messages_per_second": round(
            (sent + partial + counts.get(StepStatus.FAILED, 0) + counts.get(StepStatus.UNKNOWN, 0)) / seconds,
            1,
        )
        if seconds
        else 0.0,
    }


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"batch {summary['run_id']}: {summary['status']}", show_header=True)
    for name in ("sent", "partial", "failed", "unknown", "not sent", "duration", "msg/s", "run id"):
        table.add_column(name, justify="left" if name == "run id" else "right")
    table.add_row(
        f"{summary['sent']:,}",
        f"{summary['partial']:,}",
        f"{summary['failed']:,}",
        f"{summary['unknown']:,}",
        f"{summary['not_sent']:,}",
        f"{summary['send_seconds']:.1f} s",
        f"{summary['messages_per_second']:,.0f}",
        summary["run_id"],
    )
    Console(highlight=False, width=120).print(table)
    if summary["error"]:
        typer.echo(f"error: {summary['error'].get('message')}", err=True)
    run_id = summary["run_id"]
    if summary["failed"]:
        typer.echo(f"see the failed messages with `mailwright runs show {run_id} --state failed`", err=True)
    if summary["unknown"]:
        typer.echo(
            f"{summary['unknown']:,} message(s) may or may not have been delivered (the outcome is unknown): "
            f"`mailwright runs show {run_id} --state unknown` lists them; check with a recipient, then "
            f"`mailwright runs retry {run_id} --include-unknown` sends them again with the same Message-ID",
            err=True,
        )
