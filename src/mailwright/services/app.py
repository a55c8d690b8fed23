"""The service container the faces (API, CLI, web) share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mailwright.config import Settings
from mailwright.domain import expressions
from mailwright.ledger import RunLedger
from mailwright.secrets import write_private_file
from mailwright.services.account_keys import AccountKeyService
from mailwright.services.audit import AuditService
from mailwright.services.batches import BatchSending, BatchService
from mailwright.services.files import FileService
from mailwright.services.idempotency import IdempotencyService
from mailwright.services.runs import RunService
from mailwright.services.schedules import ScheduleService
from mailwright.services.sending import SendService
from mailwright.services.targets import TargetService
from mailwright.services.tokens import TokenService
from mailwright.services.triggers import TriggerService
from mailwright.services.web_auth import WebAuthService
from mailwright.services.workflows import WorkflowService
from mailwright.storage.db import Database
from mailwright.storage.files import FileStore
from mailwright.transport.outbound import set_outbound_policy
from mailwright.transport.pool import PoolRegistry, shared_pools

if TYPE_CHECKING:
    from mailwright.activities.context import ActivityContext
    from mailwright.engine.executor import Executor
    from mailwright.engine.triggers import TriggerManager

FIRST_TOKEN_FILE = "first-admin-token"  # in the home folder, mode 0600


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.database_url is None:
            settings.ensure_home()
        self.db = Database(settings.effective_database_url)
        self.db.migrate()
        self.files = FileStore(settings.files_dir or settings.home / "files")
        self.file_service = FileService(self.db, self.files)  # retention: summary and prune
        box = settings.secret_box()
        expressions.set_time_limit(settings.expression_time_limit)  # the executor's budget per rendering
        set_outbound_policy(settings.outbound_policy())  # what targets may connect to
        self.account_keys = AccountKeyService(self.db, box)
        self.targets = TargetService(self.db, self.account_keys)
        self.sending = SendService(self.targets, self.files)
        # SMTP connection pools, shared by every send of the process; closed by `aclose`.
        self.pools: PoolRegistry = shared_pools()
        self.tokens = TokenService(self.db)
        self.audit = AuditService(self.db)  # the services record into it; this reads it
        self.web_auth = WebAuthService(self.db, self.tokens)
        self.workflows = WorkflowService(self.db)
        self.ledger = RunLedger(self.db)  # the one writer of runs' and steps' state
        self.runs = RunService(self.db, self.ledger)
        # Idempotency-Key: a retried request gets the run its first attempt started.
        self.idempotency = IdempotencyService(self.db, self.runs)
        self.batches = BatchService(
            self.db, self.targets, self.runs, files=self.files, keys=self.idempotency, ledger=self.ledger
        )
        self.schedules = ScheduleService(self.db, self.runs)
        self.triggers = TriggerService(self.db, self.runs)
        self.workflows.on_saved = self._workflow_saved

    def executor(
        self, *, worker_id: str, lease: timedelta | None = None, with_files: bool = True
    ) -> Executor:
        """An executor of runs wired to these services (its lease: the settings' unless given).

        `with_files`: read attachments are kept in the file store, and steps may send files
        by reference; without, they are returned inline.
        """
        # Imported here: only the commands that execute runs load the engine.
        from mailwright.engine.executor import Executor

        files = self.files if with_files else None
        return Executor(
            self.ledger,
            contexts=ActivityContexts(self.targets, files),
            batches=BatchSending(self.targets, files),
            worker_id=worker_id,
            lease=lease if lease is not None else timedelta(seconds=self.settings.lease_seconds),
        )

    def mail_triggers(self) -> TriggerManager:
        """The watcher of the email triggers' mailboxes, for a worker to run."""
        # Imported here: the trigger manager is built on these services.
        from mailwright.engine.triggers import TriggerManager

        return TriggerManager(self)

    def first_start_token(self) -> tuple[Path, str] | None:
        """On first start, a new admin token, written to a file only the owner can read.

        The caller prints the file's path, not the token (stdout ends up in journald and
        container logs); None when a token existed already.
        """
        admin = self.tokens.ensure_admin()
        if admin is None:
            return None
        path = self.settings.ensure_home() / FIRST_TOKEN_FILE
        write_private_file(path, admin.token + "\n")
        return path, admin.token

    def _workflow_saved(self, workflow_id: str) -> None:
        self.schedules.sync(workflow_id)
        self.triggers.sync(workflow_id)

    async def aclose(self) -> None:
        """Release what lives in the event loop (pooled SMTP connections: QUIT); then `close`."""
        await self.pools.aclose()

    def close(self) -> None:
        self.db.dispose()


class ActivityContexts:
    """What the executor builds each activity's context with (engine/ports.py `ActivityContexts`)."""

    def __init__(self, targets: TargetService, files: FileStore | None) -> None:
        self._targets = targets
        self._files = files

    def context(
        self,
        *,
        run_id: str,
        step: str,
        target: str | None,
        account_key: str | None,
        message_id: str | None,
        remember_message_id: Callable[[str], None],
        mark_sending: Callable[[], Awaitable[None]],
    ) -> ActivityContext:
        # Imported here, like the engine: only the commands that execute runs load activities.
        from mailwright.activities.context import ActivityContext

        return ActivityContext(
            run_id=run_id,
            step=step,
            targets=self._targets,
            target=target,
            account_key=account_key,
            message_id=message_id,
            remember_message_id=remember_message_id,
            mark_sending=mark_sending,
            files=self._files,
        )
