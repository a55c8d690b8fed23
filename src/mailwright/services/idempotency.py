"""Idempotency keys: a retried request gets the run its first attempt started, never a second one.

A client sends `Idempotency-Key: K` (the web Send Email form sends a one-time key of
its own). The key is remembered per scope (one per endpoint, one per workflow) with
the SHA-256 of the canonical JSON of the validated request and the id of the run it
started. The same key with the same request answers with that run; with another
request it is refused (422), because the client has mixed up two messages.

The key row is written in the transaction that writes the run: a crash cannot leave
a run without its key (a retry would send twice) or a key without its run. Two
concurrent requests with one key both try that transaction; the primary key refuses
the second insert, its run is rolled back with it, and it answers with the first.

Keys are kept for `KEY_RETENTION` (24 hours); an older key counts as unused, and
expired rows are deleted now and then by the requests that write new keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from mailwright.errors import IdempotencyKeyReusedError, ValidationError
from mailwright.services.common import find
from mailwright.services.runs import RunService
from mailwright.services.sending import SendEmailRequest
from mailwright.storage.db import Database
from mailwright.storage.tables import IdempotencyKeyRow, WorkflowRow, utcnow

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255  # the column's width
# Printable ASCII (space to tilde): what every HTTP stack carries unchanged in a header.
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
_KEY = re.compile(KEY_PATTERN)
KEY_RETENTION = timedelta(hours=24)
# Expired keys are deleted by a request that writes a key, at most this often per process.
PRUNE_EVERY_SECONDS = 600.0

SEND_EMAIL_SCOPE = "send-email"
BATCH_SCOPE = "send-email-batch"
WEB_SEND_SCOPE = "web-send"


def workflow_scope(workflow_id: str) -> str:
    """Keys of workflow runs are per workflow: the same key may start two different workflows."""
    return f"workflow:{workflow_id}"


def check_key(key: str) -> str:
    """The key as given, if it is 1 to 255 printable ASCII characters."""
    if not _KEY.fullmatch(key):
        if not key:
            problem = "is empty"
        elif len(key) > MAX_KEY_LENGTH:
            problem = f"has {len(key)} characters"
        else:
            problem = "has a character that is not printable ASCII"
        raise ValidationError(
            f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters; "
            f"this one {problem}",
            field=HEADER,
            hint="use a random value such as a UUID, one per message (or batch, or run) you mean to send",
        )
    return key


def request_hash(request: Any) -> str:
    """SHA-256 (hex) of the request's canonical JSON: the same fields and values give the same hash."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """A key a request wants to use, and the hash of what it asks for."""

    scope: str
    key: str
    request_hash: str

    @classmethod
    def of(cls, scope: str, key: str, request: Any) -> IdempotencyClaim:
        """A claim on `key` (checked: 422 if unusable) for the JSON-able `request`."""
        return cls(scope=scope, key=check_key(key), request_hash=request_hash(request))


@dataclass(frozen=True, slots=True)
class Started:
    """The run a request started, or (`replayed`) the one the first request with its key started."""

    run_id: str
    replayed: bool = False


class IdempotencyService:
    def __init__(self, db: Database, runs: RunService) -> None:
        self._db = db
        self._runs = runs
        self._prune_lock = threading.Lock()
        self._pruned_at: float | None = None  # monotonic; None: not yet in this process

    # --- the general form ------------------------------------------------------------

    def first_run(self, claim: IdempotencyClaim) -> str | None:
        """The run started with this key within the retention time, if any.

        Raises `IdempotencyKeyReusedError` (422) if the key came with another request.
        """
        with self._db.session() as session:
            row = session.get(IdempotencyKeyRow, (claim.scope, claim.key))
            if row is None or _expired(row.created_at):
                return None
            if row.request_hash != claim.request_hash:
                raise IdempotencyKeyReusedError(
                    claim.key, header=HEADER, kept_hours=round(KEY_RETENTION.total_seconds() / 3600)
                )
            return row.run_id

    def record(self, session: Session, claim: IdempotencyClaim, run_id: str) -> None:
        """Write the key for `run_id` in the caller's transaction (which also writes the run).

        Raises IntegrityError when another request wrote the key first: the caller's
        transaction must then be rolled back, and `first_run` tells which run won.
        """
        # An expired key is free again: its old row goes, in this transaction.
        session.execute(
            delete(IdempotencyKeyRow).where(
                IdempotencyKeyRow.scope == claim.scope,
                IdempotencyKeyRow.key == claim.key,
                IdempotencyKeyRow.created_at < utcnow() - KEY_RETENTION,
            )
        )
        session.add(
            IdempotencyKeyRow(
                scope=claim.scope, key=claim.key, request_hash=claim.request_hash, run_id=run_id
            )
        )
        session.flush()

    def start(
        self,
        claim: IdempotencyClaim | None,
        create: Callable[[Session], str],
        *,
        check: Callable[[], None] | None = None,
    ) -> Started:
        """Start a run once per key: `create` writes it in the session given and returns its id.

        Without a claim, `create` simply runs. `check` (bad input: 4xx) runs only when
        the key is new, so a retry is answered even if, say, the target has since gone.
        The caller tells the workers about a new run (not a replayed one) itself.
        """
        if claim is not None and (first := self.first_run(claim)) is not None:
            return Started(first, replayed=True)
        if check is not None:
            check()

        def apply(session: Session) -> str:
            run_id = create(session)
            if claim is not None:
                self.record(session, claim, run_id)
            return run_id

        try:
            # The group commit: concurrent requests share one transaction and one disk sync.
            run_id = self._db.group.write_sync(apply)
        except IntegrityError:
            # Another request with this key committed first; this one's run was rolled back.
            first = self.first_run(claim) if claim is not None else None
            if first is None:
                raise
            return Started(first, replayed=True)
        if claim is not None:
            self.prune_now_and_then()
        return Started(run_id)

    # --- the runs a key can start ----------------------------------------------------

    def start_send_email(
        self,
        request: SendEmailRequest,
        claim: IdempotencyClaim | None,
        *,
        check: Callable[[], None] | None = None,
    ) -> Started:
        """`RunService.start_send_email`, once per key; `check` validates a new request first."""
        started = self.start(
            claim,
            lambda session: self._runs.create_send_email(session, request),
            check=check,
        )
        if not started.replayed:
            self._runs.notify(started.run_id)
        return started

    def start_workflow(
        self,
        ref: str,
        *,
        key: str | None,
        inputs: dict[str, Any],
        target: str | None,
        account_key: str | None,
    ) -> Started:
        """`RunService.start_workflow`, once per key and workflow (404 for an unknown workflow)."""
        claim = None
        if key is not None:
            request = {"target": target, "account_key": account_key, "inputs": inputs}
            claim = IdempotencyClaim.of(workflow_scope(self._workflow_id(ref)), key, request)
        started = self.start(
            claim,
            lambda session: (
                self._runs.create_workflow_run(
                    session, ref, inputs=inputs, target=target, account_key=account_key
                ).id
            ),
        )
        if not started.replayed:
            self._runs.notify(started.run_id)
        return started

    def _workflow_id(self, ref: str) -> str:
        with self._db.session() as session:
            return find(session, WorkflowRow, ref, what="workflow").id

    # --- retention -------------------------------------------------------------------

    def prune(self) -> int:
        """Delete the keys older than `KEY_RETENTION`; how many went."""
        with self._db.session() as session:
            result = session.execute(
                delete(IdempotencyKeyRow).where(IdempotencyKeyRow.created_at < utcnow() - KEY_RETENTION)
            )
        removed = int(getattr(result, "rowcount", 0) or 0)
        if removed:
            log.info("removed %d idempotency key(s) older than %s", removed, KEY_RETENTION)
        return removed

    def prune_now_and_then(self) -> None:
        """`prune`, at most once per PRUNE_EVERY_SECONDS; a failure only logs (the request succeeded)."""
        now = time.monotonic()
        with self._prune_lock:
            if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_SECONDS:
                return
            self._pruned_at = now
        try:
            self.prune()
        except SQLAlchemyError as exc:  # a busy database: the next request tries again later
            log.warning("could not remove expired idempotency keys: %s", exc)
            with self._prune_lock:
                self._pruned_at = None

    def count(self) -> int:
        """Keys stored (expired ones included until pruned)."""
        with self._db.session() as session:
            return int(session.scalar(select(func.count()).select_from(IdempotencyKeyRow)) or 0)


def _expired(created_at: datetime) -> bool:
    return created_at < utcnow() - KEY_RETENTION
