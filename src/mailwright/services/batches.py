"""Batches: many messages as one run, one step per message, stored before anything is sent.

Messages are streamed: each is validated (every field, the target and key, the
sender) and written in chunks of `CHUNK` rows per transaction, so a 100,000-line
file never sits in memory. The run stays `preparing` (no worker takes it) until
the last message is stored. If any message is bad, the whole batch is refused:
nothing is queued, the rows already written are deleted, and the error lists
the bad lines (or message indexes) with what is wrong in each.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailwright.domain.addresses import Address
from mailwright.domain.capabilities import MailSender
from mailwright.domain.message import OutgoingMessage, make_message_id
from mailwright.domain.runs import StepStatus
from mailwright.domain.validation import describe
from mailwright.errors import BatchProblem, BatchRefusedError, MailwrightError, NotFoundError, ValidationError
from mailwright.ledger import RunLedger
from mailwright.ledger.batch import PREPARE_LEASE, new_step
from mailwright.services.idempotency import IdempotencyClaim, IdempotencyService
from mailwright.services.run_pages import search_condition
from mailwright.services.runs import RunService, step_state_filter
from mailwright.services.sending import (
    SendEmailRequest,
    build_outgoing,
    deliver_output,
    resolve_sender,
)
from mailwright.services.targets import ResolvedTarget, TargetService
from mailwright.storage import jsontext
from mailwright.storage.bulk import JSONText
from mailwright.storage.db import Database
from mailwright.storage.files import FileStore
from mailwright.storage.tables import RunRow, RunStepRow, StepInputRow

BATCH_KIND = "batch"
BATCH_NAME = "Send Email batch"
STEP_ID = "message"
# Rows per transaction while storing, and the text of their messages at most: a commit
# syncs the disk, so fewer and larger ones store faster; the bytes bound the memory
# when lines carry attachments.
CHUNK = 4000
CHUNK_BYTES = 16 * 1024 * 1024
SHOWN_PROBLEMS = 20
DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 256
MAX_ATTEMPTS = 4
RESULTS_PAGE = 1000  # results read at most per query

log = logging.getLogger(__name__)


class BatchMessage(SendEmailRequest):
    """One message of a batch: the fields of /api/v1/send-email; `target` defaults to the batch's."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    target: str = Field(default="", description="this message's target; blank: the batch's")


@dataclass(slots=True)
class _Intake:
    """What storing a batch has seen so far."""

    total: int = 0
    bad: int = 0
    problems: list[BatchProblem] = field(default_factory=list)
    chunk: list[tuple[Any, ...]] = field(default_factory=list)  # step rows not yet written
    inputs: list[tuple[str, Any]] = field(default_factory=list)  # their (step id, fields)
    size: int = 0  # characters of the chunk's lines

    def full(self) -> bool:
        return len(self.chunk) >= CHUNK or self.size >= CHUNK_BYTES

    def take(self) -> tuple[list[tuple[Any, ...]], list[tuple[str, Any]]]:
        """The chunk to write, handed over whole (the intake starts a new one)."""
        taken = self.chunk, self.inputs
        self.chunk, self.inputs, self.size = [], [], 0
        return taken

    def refuse(self, where: str, message: str) -> None:
        self.bad += 1
        self.take()  # the batch will be refused: stop writing, keep checking
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(BatchProblem(where=where, message=message))


@dataclass(frozen=True, slots=True)
class BatchCreated:
    run_id: str
    total: int
    target: str
    concurrency: int
    replayed: bool = False  # an earlier request with the same Idempotency-Key stored this batch


class BatchService:
    def __init__(
        self,
        db: Database,
        targets: TargetService,
        runs: RunService,
        *,
        files: FileStore | None = None,
        keys: IdempotencyService | None = None,
        ledger: RunLedger | None = None,
    ) -> None:
        self._db = db
        self._ledger = ledger or RunLedger(db)  # stores, queues and discards the batch's run
        self._targets = targets
        self._runs = runs
        self._files = files  # attachments given by reference (`file: sha256:…`) are checked here
        self._keys = keys or IdempotencyService(db, runs)

    def create(
        self,
        messages: Iterable[tuple[str, str | dict[str, Any]]],
        *,
        target: str,
        account_key: str | None = None,
        concurrency: int | None = None,
        source: str = "batch",
        idempotency: IdempotencyClaim | None = None,
        default_from: str | None = None,
    ) -> BatchCreated:
        """Store a batch from (where, message) pairs: JSON text lines or parsed objects.

        Blank text lines are skipped. `default_from` is the From of a message that names none.
        Raises `BatchRefusedError` when any message is bad.
        With an `idempotency` claim whose key already started a batch, that batch is
        answered (`replayed`) and nothing is stored.
        """
        if idempotency is not None and (first := self._keys.first_run(idempotency)) is not None:
            return self._replayed(first)
        resolved = self._targets.resolve(target, account_key=account_key)
        resolved.mail_sender("sending mail")  # a clear error now if the target cannot send mail
        workers = _concurrency(concurrency, resolved)
        # The key is written with the run while it is `preparing`: a refused or abandoned batch
        # is deleted, and its key with it (ON DELETE CASCADE), so the key can be used again.
        started = self._keys.start(
            idempotency,
            lambda session: self._start(
                session, resolved, account_key=account_key, concurrency=workers, source=source
            ),
        )
        if started.replayed:
            return self._replayed(started.run_id)
        run_id = started.run_id
        try:
            intake = self._store(
                run_id, messages, resolved=resolved, batch_key=account_key, default_from=default_from
            )
        except BaseException:
            self._discard(run_id)
            raise
        if intake.bad or intake.total == 0:
            self._discard(run_id)
            if intake.total == 0:
                raise ValidationError(f"{source}: there are no messages in it", field="messages")
            raise BatchRefusedError(
                problems=intake.problems, bad=intake.bad, total=intake.total, source=source
            )
        self._queue(run_id, total=intake.total)
        self._runs.notify(run_id)
        return BatchCreated(
            run_id=run_id, total=intake.total, target=resolved.target.display_name, concurrency=workers
        )

    def _replayed(self, run_id: str) -> BatchCreated:
        """The batch an earlier request with the same key stored (it may still be storing)."""
        with self._db.session() as session:
            run = session.get(RunRow, run_id)
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            total = run.document.get("messages")
            if total is None:  # still being stored: what is stored so far
                total = session.scalar(
                    select(func.count()).select_from(RunStepRow).where(RunStepRow.run_id == run_id)
                )
            return BatchCreated(
                run_id=run.id,
                total=int(total or 0),
                target=run.target or "",
                concurrency=int(run.document.get("concurrency") or DEFAULT_CONCURRENCY),
                replayed=True,
            )

    def _start(
        self,
        session: Session,
        resolved: ResolvedTarget,
        *,
        account_key: str | None,
        concurrency: int,
        source: str,
    ) -> str:
        """The batch's run row, `preparing`, in the caller's transaction."""
        return self._ledger.batches.open(
            session,
            name=BATCH_NAME,
            # Only the executor reads a run's document; "kind" sends it to the batch engine.
            document={
                "kind": BATCH_KIND,
                "name": BATCH_NAME,
                "source": source,
                "concurrency": concurrency,
            },
            target=resolved.target.display_name,
            account_key=account_key,
            pool=resolved.pool,
        )

    def _store(
        self,
        run_id: str,
        messages: Iterable[tuple[str, str | dict[str, Any]]],
        *,
        resolved: ResolvedTarget,
        batch_key: str | None,
        default_from: str | None = None,
    ) -> _Intake:
        intake = _Intake()
        renewed = time.monotonic()
        targets: dict[tuple[str, str | None], ResolvedTarget] = {("", batch_key): resolved}
        senders: dict[tuple[str, str | None], Address] = {}
        # A chunk is written by this thread while the next one is checked: SQLite writes and
        # syncs without the interpreter lock, so the two overlap. One chunk at most is in
        # flight, and leaving this block waits for it (so a refused batch is discarded after).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-store") as writer:
            written: Future[None] | None = None
            for where, raw in messages:
                if isinstance(raw, str) and not raw.strip():
                    continue
                intake.total += 1
                try:
                    fields, domain = self._check(
                        raw, targets=targets, senders=senders, batch_key=batch_key, default_from=default_from
                    )
                except MailwrightError as exc:
                    intake.refuse(where, exc.message)
                    continue
                if intake.bad:
                    continue
                # A line already is the JSON to store: it was parsed and every field checked
                # (unless it took the batch's From: then the fields it became are stored).
                taken = default_from is not None and fields.get("from") is default_from
                inputs = JSONText(raw.strip()) if isinstance(raw, str) and not taken else fields
                step = _step_row(run_id, index=intake.total - 1, domain=domain)
                intake.chunk.append(step)
                intake.inputs.append((step[0], inputs))
                intake.size += len(raw) if isinstance(raw, str) else 0  # an API body is in memory already
                if intake.full():
                    written = self._write_behind(writer, written, intake)
                    renewed = self._renew(run_id, renewed)
            if intake.chunk and not intake.bad:
                written = self._write_behind(writer, written, intake)
            if written is not None:
                written.result()
        return intake

    def _write_behind(
        self, writer: ThreadPoolExecutor, written: Future[None] | None, intake: _Intake
    ) -> Future[None]:
        if written is not None:
            written.result()  # the previous chunk is on disk (or its error is raised here)
        return writer.submit(self._insert, *intake.take())

    def _check(
        self,
        raw: str | dict[str, Any],
        *,
        targets: dict[tuple[str, str | None], ResolvedTarget],
        senders: dict[tuple[str, str | None], Address],
        batch_key: str | None,
        default_from: str | None = None,
    ) -> tuple[dict[str, Any], str]:
        """The message's fields and its sender's domain if everything in it is valid.

        Raises a MailwrightError otherwise.
        """
        fields = _parse(raw)
        if default_from is not None and not str(fields.get("from") or "").strip():
            fields = {**fields, "from": default_from}
        try:
            request = BatchMessage.model_validate(fields)
        except pydantic.ValidationError as exc:
            raise describe(exc) from None
        key = request.account_key if request.account_key is not None else batch_key
        which = (request.target.strip().casefold(), key)
        resolved = targets.get(which)
        if resolved is None:
            # Only a message that names another target (or key) costs a lookup.
            reference = request.target or targets["", batch_key].target.id
            resolved = self._targets.resolve(reference, account_key=key)
            resolved.mail_sender("sending mail")
            _same_pool(resolved, targets["", batch_key])
            targets[which] = resolved
        sender = sender_of(request, resolved, cache=senders)
        build_outgoing(request, sender, files=self._files)
        return fields, sender.ascii_domain

    def _renew(self, run_id: str, renewed: float) -> float:
        """Extend the storing lease now and then (a file of millions of lines takes minutes)."""
        if time.monotonic() - renewed < PREPARE_LEASE.total_seconds() / 4:
            return renewed
        self._ledger.batches.keep_storing(run_id)
        return time.monotonic()

    def discard_abandoned(self) -> int:
        """Remove batches whose storing process stopped before their last message was stored.

        Such a batch was never accepted (its caller got no run id back and nothing
        of it was sent), so nothing is lost: its rows are deleted, and the log says so.
        """
        abandoned = self._ledger.batches.discard_abandoned(kind=BATCH_KIND)
        for run_id, created_at in abandoned:
            log.warning(
                "discarded batch run %s (created %s): the process storing it stopped before its last "
                "message was stored, so none of it was queued or sent",
                run_id,
                f"{created_at:%Y-%m-%d %H:%M:%S}",
            )
        return len(abandoned)

    def _insert(self, chunk: list[tuple[Any, ...]], inputs: list[tuple[str, Any]]) -> None:
        """Write a chunk's step rows and their messages' fields, in one transaction."""
        self._ledger.batches.store_steps(chunk, inputs)

    def _queue(self, run_id: str, *, total: int) -> None:
        self._ledger.batches.enqueue(run_id, total=total)

    def _discard(self, run_id: str) -> None:
        self._ledger.batches.discard(run_id)

    # --- reading a batch back -------------------------------------------------

    def run_status(self, run_id: str) -> str:
        """Only the run row's status: cheap to poll whatever the size of the batch."""
        with self._db.session() as session:
            status = session.scalar(select(RunRow.status).where(RunRow.id == run_id))
        if status is None:
            raise NotFoundError(f"no run with id {run_id!r}", hint="list them with `mailwright runs list`")
        return status

    def counts(self, run_id: str) -> dict[str, int]:
        """How many steps of the run are in each status."""
        with self._db.session() as session:
            rows = session.execute(
                select(RunStepRow.status, func.count())
                .where(RunStepRow.run_id == run_id)
                .group_by(RunStepRow.status)
            ).all()
            return {status: int(n) for status, n in rows}

    def results(
        self,
        run_id: str,
        *,
        offset: int = 0,
        limit: int = 100,
        status: str | None = None,
        send_state: str | None = None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """One page of per-message results, in message order (`send_state`: "unknown", "sent"…)."""
        with self._db.session() as session:
            if session.get(RunRow, run_id) is None:
                raise NotFoundError(
                    f"no run with id {run_id!r}", hint="list them with `mailwright runs list`"
                )
            query = (
                select(RunStepRow)
                .where(RunStepRow.run_id == run_id)
                .order_by(RunStepRow.position, RunStepRow.item_index)
                .offset(max(0, offset))
                .limit(max(1, min(limit, RESULTS_PAGE)))
            )
            if status:
                query = query.where(RunStepRow.status == status)
            if send_state:
                query = query.where(step_state_filter(send_state))
            if search and search.strip():
                query = query.outerjoin(StepInputRow, StepInputRow.step_id == RunStepRow.id).where(
                    search_condition(search.strip())
                )
            return [message_result(row) for row in session.scalars(query).all()]

    def all_results(self, run_id: str) -> list[dict[str, Any]]:
        """Every message's outcome, in message order (for batches small enough to answer whole)."""
        out: list[dict[str, Any]] = []
        while page := self.results(run_id, offset=len(out), limit=RESULTS_PAGE):
            out.extend(page)
            if len(page) < RESULTS_PAGE:
                break
        return out


def message_result(row: RunStepRow) -> dict[str, Any]:
    """A batch message's outcome as the API and `--json` show it."""
    output = row.output or {}
    return {
        "index": row.item_index,
        "status": output.get("status", StepStatus.FAILED)
        if row.status == StepStatus.SUCCEEDED
        else row.status,
        "message_id": row.message_id,
        "recipients": output.get("recipients"),
        "server_reply": output.get("server_reply"),
        "error": row.error,
        "attempts": row.attempts,
        "send_state": row.send_state,
        "notes": row.notes,
    }


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A batch message ready to send: built, with its target resolved."""

    message: OutgoingMessage
    resolved: ResolvedTarget
    request: BatchMessage


class BatchSending:
    """How the engine's batch runner sends (engine/ports.py `BatchSenders`), with the services'
    target resolution, rate limits and SMTP pools."""

    def __init__(self, targets: TargetService, files: FileStore | None = None) -> None:
        self._targets = targets
        self._files = files

    def for_batch(self, *, target: str, account_key: str | None) -> _BatchSender:
        return _BatchSender(self._targets, self._files, target=target, account_key=account_key)


class _BatchSender:
    """One batch's sender: targets, senders and pools looked up once per target and key."""

    def __init__(
        self, targets: TargetService, files: FileStore | None, *, target: str, account_key: str | None
    ) -> None:
        self._targets = targets
        self._files = files
        self._target = target
        self._account_key = account_key
        self._resolved: dict[tuple[str, str | None], ResolvedTarget] = {}
        self._senders: dict[tuple[str, str | None], Address] = {}
        self._pools: dict[int, MailSender] = {}  # by id() of the entries of `_resolved`

    def prepare(self, inputs: dict[str, Any]) -> _Prepared:
        request = BatchMessage.model_validate(inputs)
        key = request.account_key if request.account_key is not None else self._account_key
        which = (request.target.strip().casefold() or "", key)
        resolved = self._resolved.get(which)
        if resolved is None:
            resolved = self._targets.resolve(request.target or self._target, account_key=key)
            self._resolved[which] = resolved
        sender = sender_of(request, resolved, cache=self._senders)
        return _Prepared(build_outgoing(request, sender, files=self._files), resolved, request)

    @staticmethod
    def message_id_domain(message: _Prepared) -> str:
        return message.message.sender.ascii_domain

    def slot(self, message: _Prepared, *, max_wait: float) -> Awaitable[None] | None:
        resolved = message.resolved
        limits = self._pool_of(resolved).rate_limits
        if not limits:
            return None
        return self._targets.rate_limits.acquire(
            key=resolved.target.id, limits=limits, target=resolved.target.display_name, max_wait=max_wait
        )

    async def deliver(
        self, message: _Prepared, *, message_id: str, before_data: Callable[[], Awaitable[None]]
    ) -> dict[str, Any]:
        return await deliver_output(
            message.message,
            message.resolved,
            continue_if_one_address_valid=message.request.continue_if_one_address_valid,
            message_id=message_id,
            sender=self._pool_of(message.resolved),
            before_data=before_data,
        )

    def _pool_of(self, resolved: ResolvedTarget) -> MailSender:
        # Looked up once per target and key of the batch: the lookup digests the key's secret.
        pool = self._pools.get(id(resolved))
        if pool is None or pool.closed:
            pool = self._pools[id(resolved)] = resolved.mail_sender("sending mail")
        return pool


def sender_of(
    request: SendEmailRequest, resolved: ResolvedTarget, *, cache: dict[tuple[str, str | None], Address]
) -> Address:
    """The message's From, parsed once per distinct sender and target: batches repeat it."""
    key = (request.from_ or "", resolved.login.key_name if resolved.login else resolved.target.id)
    sender = cache.get(key)
    if sender is None:
        sender = cache[key] = resolve_sender(request, resolved)
    return sender


def _parse(raw: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = jsontext.loads(raw.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValidationError(
            f'a message must be a JSON object like {{"to": [...], "subject": ...}}, '
            f"not {type(value).__name__}"
        )
    return value


def _step_row(run_id: str, *, index: int, domain: str) -> tuple[Any, ...]:
    """The step row of one message (its fields go to `step_inputs`).

    The Message-ID is fixed now, so that every attempt, in this process or after a
    crash, sends the very same message, and marking messages `sending` can be one
    statement for a range of them.
    """
    return new_step(
        run_id,
        index=index,
        step_id=STEP_ID,
        activity="send_email",
        max_attempts=MAX_ATTEMPTS,
        message_id=make_message_id(domain),
    )


def _concurrency(requested: int | None, resolved: ResolvedTarget) -> int:
    if requested is not None and not 1 <= requested <= MAX_CONCURRENCY:
        raise ValidationError(
            f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {requested}", field="concurrency"
        )
    if requested is not None:
        return requested
    # The target's pool opens at most `max_connections`. Four messages in hand per connection
    # keep each one pipelining (one round trip per message) while the next ones are built;
    # with two, a 20 ms relay got 570 msg/s over 16 connections, with four about 700.
    connections = resolved.mail_sender("sending mail").connections
    if connections > 0:
        return min(MAX_CONCURRENCY, max(DEFAULT_CONCURRENCY, 4 * connections))
    return DEFAULT_CONCURRENCY


def _same_pool(resolved: ResolvedTarget, batch: ResolvedTarget) -> None:
    """A batch runs in its target's worker pool: a message may not name a target of another pool."""
    if resolved.pool != batch.pool:
        raise ValidationError(
            f"target {resolved.target.display_name!r} is in worker pool {resolved.pool or '(none)'!r}, "
            f"but the batch's target {batch.target.display_name!r} is in {batch.pool or '(none)'!r}; "
            "a batch runs in one pool",
            hint="send the messages for each pool as a batch of its own",
        )
