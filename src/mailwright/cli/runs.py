"""`mailwright runs` and `mailwright worker`."""

from typing import TYPE_CHECKING, Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_json, print_table
from mailwright.cli.serve import LogLevel
from mailwright.domain.runs import RunStatus, StepStatus

if TYPE_CHECKING:
    from mailwright.services.runs import RunPublic

app = typer.Typer(help="Runs: every execution of a workflow, step by step.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def print_run(run: "RunPublic", *, state: str | None = None) -> None:
    typer.echo(f"run {run.id}  {run.workflow!r}  {run.status.upper()}")
    typer.echo(f"  created {run.created_at:%Y-%m-%d %H:%M:%S}, target {run.target or '-'}")
    if run.trigger:
        mail = run.trigger
        where = f"{mail.get('target')} / {mail.get('folder')}, UID {mail.get('uid') or mail.get('uidl')}"
        typer.echo(f"  started by mail {mail.get('subject')!r} from {mail.get('from')} ({where})")
    if run.pool:
        typer.echo(f"  worker pool {run.pool}")
    if run.waiting:
        typer.echo(f"  {run.waiting}")
    if run.error:
        typer.echo(f"  error: {run.error.get('message')}")
    if run.step_counts:
        counts = ", ".join(f"{status} {n:,}" for status, n in sorted(run.step_counts.items()))
        typer.echo(f"  {run.steps_total:,} messages: {counts}")
        if state is not None:
            typer.echo(f"  (the steps in state {state!r} shown, the first 100 at most)")
        elif len(run.steps) < (run.steps_total or 0):
            typer.echo(f"  (the first {len(run.steps)} shown; --state STATE filters, the API pages)")
    unknown = (run.step_counts or {}).get(StepStatus.UNKNOWN) or sum(
        s.status == StepStatus.UNKNOWN for s in run.steps
    )
    if unknown:
        typer.echo(
            f"  {unknown:,} message(s) may or may not have been delivered (outcome unknown): "
            f"check with a recipient; `mailwright runs retry {run.id} --include-unknown` sends them again"
        )
    for step in run.steps:
        attempts = f"attempts {step.attempts}/{step.max_attempts}"
        typer.echo(f"  {step.status:<10} {step.step:<20} {step.activity:<14} {attempts}")
        if step.message_id:
            typer.echo(f"             message-id {step.message_id} ({step.send_state or 'not sent'})")
        if step.output and "recipients" in step.output:
            for r in step.output["recipients"]:
                reply = f"{r.get('code') or ''} {r.get('reply', '')}"
                typer.echo(f"             {r['status']:<8} {r['address']}  {reply}")
        if step.error:
            typer.echo(f"             error: {step.error.get('message')}")
        for note in step.notes:
            typer.echo(f"             note: {note}")


@app.command("list")
def list_runs(
    status: Annotated[
        str | None, typer.Option("--status", help="queued, running, succeeded, failed, cancelled")
    ] = None,
    workflow: Annotated[str | None, typer.Option("--workflow", help="only this workflow's runs")] = None,
    target: Annotated[str | None, typer.Option("--target", help="only the runs of this target")] = None,
    limit: Annotated[int, typer.Option("--limit", help="how many, newest first")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip this many (the next page)")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first."""
    runs = services().runs.list_runs(
        limit=limit, status=status, workflow=workflow, target=target, offset=offset
    )
    if as_json:
        print_json(runs)
        return
    print_table(
        ["ID", "WORKFLOW", "STATUS", "CREATED", "FINISHED"],
        [
            [
                r.id,
                r.workflow,
                r.status,
                f"{r.created_at:%Y-%m-%d %H:%M:%S}",
                f"{r.finished_at:%H:%M:%S}" if r.finished_at else "",
            ]
            for r in runs
        ],
    )


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="run id")],
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="only steps in this state: pending, running, deferred, succeeded, failed, unknown "
            "(may or may not have been delivered), skipped, cancelled; or the send states sending, sent",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run step by step."""
    run = services().runs.get(run_id, state=state)
    if as_json:
        print_json(run)
    else:
        print_run(run, state=state)


@app.command("cancel")
def cancel(run_id: Annotated[str, typer.Argument(help="run id")]) -> None:
    """Cancel a queued or running run (a running step finishes first)."""
    run = services().runs.cancel(run_id)
    typer.echo(
        f"run {run.id}: {'cancelled' if run.status == RunStatus.CANCELLED else 'cancellation requested'}"
    )


@app.command("retry")
def retry(
    run_id: Annotated[str, typer.Argument(help="run id")],
    include_unknown: Annotated[
        bool,
        typer.Option(
            "--include-unknown",
            help="also send again the messages whose outcome is unknown (they may have been "
            "delivered already; they keep their Message-ID)",
        ),
    ] = False,
) -> None:
    """Queue a failed or cancelled run again; succeeded steps are not repeated."""
    run = services().runs.retry(run_id, include_unknown=include_unknown)
    typer.echo(f"run {run.id} queued again")
    left = (run.step_counts or {}).get(StepStatus.UNKNOWN) or sum(
        s.status == StepStatus.UNKNOWN for s in run.steps
    )
    if left:
        typer.echo(
            f"{left:,} message(s) with an unknown outcome are left as they are; "
            "--include-unknown sends them again",
            err=True,
        )


def worker(
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="serve this worker pool: run the steps of targets with --worker-pool NAME, and only "
            "those (MAILWRIGHT_WORKER_POOL; default: targets that name no pool)",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", min=1, max=1000, help="runs executed at once (MAILWRIGHT_WORKER_CONCURRENCY)"
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="serve Prometheus metrics at http://HOST:PORT/metrics, 0: any free port "
            "(MAILWRIGHT_METRICS_PORT; default: none)",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="address the metrics listen on; they need no token")
    ] = "127.0.0.1",
    log_level: Annotated[
        LogLevel | None,
        typer.Option("--log-level", case_sensitive=False, help="how much to log (MAILWRIGHT_LOG_LEVEL)"),
    ] = None,
) -> None:
    """Execute queued runs in this process until stopped (Ctrl-C or SIGTERM).

    Start as many as you like, on any machine that reaches the database (and RabbitMQ, with
    MAILWRIGHT_BROKER=amqp://...): they share the work; `mailwright workers list` shows them.
    """
    import asyncio
    import signal

    from mailwright.cli import worker_metrics
    from mailwright.engine.worker import Worker
    from mailwright.logs import configure_logging

    svc = services()
    if pool is not None:
        svc.settings.worker_pool = _pool_name(pool)
    if concurrency is not None:
        svc.settings.worker_concurrency = concurrency
    if log_level is not None:
        svc.settings.log_level = log_level.value
    configure_logging(svc.settings.log_level)
    exporter = worker_metrics.serve_if_asked(svc, port=metrics_port, host=metrics_host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Worker(svc).run(stop)

    asyncio.run(main())
    if exporter is not None:
        exporter.shutdown()


def _pool_name(pool: str) -> str:
    import re

    from mailwright.targets.common_fields import POOL_PATTERN

    if not re.fullmatch(POOL_PATTERN, pool):
        raise typer.BadParameter(
            f"{pool!r} is not a pool name: letters, digits, '.', '_' and '-', starting with a letter or "
            "digit, at most 63 characters",
            param_hint="--pool",
        )
    return pool


def workers_list(json_output: JsonOpt = False) -> None:
    """The workers running now: host, pool, runs in hand and last heartbeat."""
    live = services().workers.live()
    if json_output:
        print_json([w.model_dump(mode="json") for w in live])
        return
    if not live:
        typer.echo("No worker is running. Start one with `mailwright worker` (or `mailwright serve`).")
        return
    typer.echo(f"{'HOST':<24} {'PID':>7}  {'POOL':<16} {'RUNS':>9}  {'BROKER':<8} LAST HEARTBEAT")
    for w in live:
        runs = f"{w.runs_in_hand}/{w.concurrency}"
        beat = w.heartbeat_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{w.host:<24} {w.pid:>7}  {w.pool or '(default)':<16} {runs:>9}  {w.broker:<8} {beat}")
