"""The service container the faces (API, CLI, web) share.

Each service is made when first asked for, with its imports: a command such as
`mailwright targets list` loads the target and key services and the database, not the
runs, batches, triggers or the SMTP connection pools. What every use needs (the home
folder, the database and its schema, the secret key, the outbound policy) is set up at
once, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

from mailwright.config import Settings
from mailwright.secrets import write_private_file
from mailwright.storage.db import Database
from mailwright.storage.files import FileStore
from mailwright.transport.outbound import set_outbound_policy

if TYPE_CHECKING:
    from mailwright.ledger import RunLedger
    from mailwright.services.account_keys import AccountKeyService
    from mailwright.services.audit import AuditService
    from mailwright.services.batches import BatchService
    from mailwright.services.files import FileService
    from mailwright.services.finishes import RedisFinishes
    from mailwright.services.idempotency import IdempotencyService
    from mailwright.services.runs import RunService
    from mailwright.services.schedules import ScheduleService
    from mailwright.services.sending import SendService
    from mailwright.services.stats import StatsService
    from mailwright.services.targets import TargetService
    from mailwright.services.tokens import TokenService
    from mailwright.services.triggers import TriggerService
    from mailwright.services.waiting import WaitService
    from mailwright.services.web_auth import WebAuthService
    from mailwright.services.workers import WorkerService
    from mailwright.services.workflows import WorkflowService
    from mailwright.transport.pool import PoolRegistry

if TYPE_CHECKING:
    from mailwright.activities.context import ActivityContext, RateLimiter
    from mailwright.domain.connection_test import ConnectionTestReport
    from mailwright.engine.executor import Executor
    from mailwright.engine.triggers import TriggerManager
    from mailwright.services.batches import BatchSending
    from mailwright.services.targets import ResolvedTarget

FIRST_TOKEN_FILE = "first-admin-token"  # in the home folder, mode 0600
T = TypeVar("T")


class made_on_first_use(Generic[T]):  # lower case: a decorator, like cached_property
    """A service made by the decorated method when first asked for, then kept.

    Unlike `functools.cached_property`, made under the container's lock: the API's
    threads asking at once still share one service (one RunService, so one set of waiters).
    """

    def __init__(self, make: Callable[[Any], T]) -> None:
        self._make = make
        self._name = make.__name__

    @overload
    def __get__(self, container: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, container: Services, owner: type[Any]) -> T: ...
    def __get__(self, container: Services | None, owner: type[Any]) -> Self | T:
        if container is None:
            return self
        made: dict[str, Any] = container.__dict__
        with container._lock:
            if self._name not in made:  # once kept, the instance's attribute answers without this
                made[self._name] = self._make(container)
            return made[self._name]  # type: ignore[no-any-return]


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()  # a service may ask for the services it needs
        if settings.database_url is None:
            settings.ensure_home()
        self.db = Database(settings.effective_database_url)
        self.db.migrate()
        self.files = FileStore(settings.files_dir or settings.home / "files")
        self._box = settings.secret_box()  # a wrong key is refused now, whatever the command
        set_outbound_policy(settings.outbound_policy())  # what targets may connect to

    @made_on_first_use
    def file_service(self) -> FileService:
        """Retention: summary and prune."""
        from mailwright.services.files import FileService

        return FileService(self.db, self.files)

    @made_on_first_use
    def account_keys(self) -> AccountKeyService:
        from mailwright.services.account_keys import AccountKeyService

        return AccountKeyService(self.db, self._box)

    @made_on_first_use
    def targets(self) -> TargetService:
        from mailwright.services.targets import TargetService

        return TargetService(self.db, self.account_keys, redis_url=self.settings.redis_url)

    @made_on_first_use
    def sending(self) -> SendService:
        from mailwright.services.sending import SendService

        return SendService(self.targets, self.files)

    @made_on_first_use
    def pools(self) -> PoolRegistry:
        """SMTP connection pools, shared by every send of the process; closed by `aclose`."""
        from mailwright.transport.pool import shared_pools

        return shared_pools()

    @made_on_first_use
    def tokens(self) -> TokenService:
        from mailwright.services.tokens import TokenService

        return TokenService(self.db)

    @made_on_first_use
    def audit(self) -> AuditService:
        """The services record into the audit log; this reads it."""
        from mailwright.services.audit import AuditService

        return AuditService(self.db)

    @made_on_first_use
    def web_auth(self) -> WebAuthService:
        from mailwright.services.web_auth import WebAuthService

        return WebAuthService(self.db, self.tokens)

    @made_on_first_use
    def workflows(self) -> WorkflowService:
        from mailwright.services.workflows import WorkflowService

        workflows = WorkflowService(self.db)
        workflows.on_saved = self._workflow_saved
        return workflows

    @made_on_first_use
    def runs(self) -> RunService:
        from mailwright.services.runs import RunService

        runs = RunService(self.db, self.ledger)
        if self.settings.redis_url:
            finishes = self.finishes
            runs.announce = finishes.announce
            runs.waiters.on_register = lambda: finishes.listen(runs.waiters.finished)
        return runs

    @made_on_first_use
    def finishes(self) -> RedisFinishes:
        """Runs ended by a worker in one process wake the waiters of another (MAILWRIGHT_REDIS_URL)."""
        from mailwright.services.finishes import RedisFinishes

        if not self.settings.redis_url:
            raise RuntimeError("finishes are announced through Redis: MAILWRIGHT_REDIS_URL is not set")
        return RedisFinishes(self.settings.redis_url)

    @made_on_first_use
    def workers(self) -> WorkerService:
        """The live workers, from their heartbeats (`mailwright workers list`)."""
        from mailwright.services.workers import WorkerService

        return WorkerService(self.db)

    @made_on_first_use
    def stats(self) -> StatsService:
        """The dashboard's figures: sends per hour and day, failure reasons, triggers' health."""
        from mailwright.services.stats import StatsService

        return StatsService(self.db)

    @made_on_first_use
    def ledger(self) -> RunLedger:
        """The one writer of runs' and steps' state."""
        from mailwright.ledger import RunLedger

        return RunLedger(self.db, range_size=self.settings.batch_range_size)

    @made_on_first_use
    def idempotency(self) -> IdempotencyService:
        """Idempotency-Key: a retried request gets the run its first attempt started."""
        from mailwright.services.idempotency import IdempotencyService

        return IdempotencyService(self.db, self.runs)

    @made_on_first_use
    def waiting(self) -> WaitService:
        """Send and wait, wait for a run, run inline: what the faces call to get an outcome."""
        from mailwright.services.waiting import WaitService

        return WaitService(
            runs=self.runs,
            idempotency=self.idempotency,
            sending=self.sending,
            make_executor=lambda worker_id: self.executor(worker_id=worker_id),
        )

    @made_on_first_use
    def batches(self) -> BatchService:
        from mailwright.services.batches import BatchService

        return BatchService(
            self.db, self.targets, self.runs, files=self.files, keys=self.idempotency, ledger=self.ledger
        )

    @made_on_first_use
    def schedules(self) -> ScheduleService:
        from mailwright.services.schedules import ScheduleService

        return ScheduleService(self.db, self.runs)

    @made_on_first_use
    def triggers(self) -> TriggerService:
        from mailwright.services.triggers import TriggerService

        return TriggerService(self.db, self.runs)

    def executor(
        self,
        *,
        worker_id: str,
        lease: timedelta | None = None,
        with_files: bool = True,
        pool: str | None = None,
    ) -> Executor:
        """An executor of runs wired to these services (its lease: the settings' unless given).

        `with_files`: read attachments are kept in the file store, and steps may send files
        by reference; without, they are returned inline.
        """
        # Imported here: only the commands that execute runs load the engine (and Jinja).
        from mailwright.domain import expressions
        from mailwright.engine.executor import Executor

        expressions.set_time_limit(self.settings.expression_time_limit)  # its budget per rendering

        files = self.files if with_files else None
        return Executor(
            self.ledger,
            contexts=ActivityContexts(self.targets, files),
            batches=_batch_sending(self.targets, files),
            worker_id=worker_id,
            lease=lease if lease is not None else timedelta(seconds=self.settings.lease_seconds),
            pool=pool,
        )

    def mail_triggers(self) -> TriggerManager:
        """The watcher of the email triggers' mailboxes, for a worker to run."""
        # Imported here: the trigger manager is built on these services.
        from mailwright.engine.triggers import TriggerManager

        return TriggerManager(self, pool=self.settings.worker_pool)

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
        if "finishes" in self.__dict__:
            self.finishes.close()
        if "targets" in self.__dict__:  # made: its shared limits hold a Redis link
            self.targets.close()
        self.db.dispose()


class ActivityContexts:
    """What the executor builds each activity's context with (engine/ports.py `ActivityContexts`)."""

    def __init__(self, targets: TargetService, files: FileStore | None) -> None:
        self._targets = targets
        self._files = files
        # Each execution of a run (one claim) resolves a target and key once, for all its steps
        # and the retries it waits for. A later claim (a deferred run, `runs retry` after a fix
        # of the key) resolves again and sees the change.
        self._runs: OrderedDict[tuple[str, int], RunTargets] = OrderedDict()

    def _targets_of(self, run_id: str, claim_epoch: int) -> RunTargets:
        execution = (run_id, claim_epoch)
        found = self._runs.get(execution)
        if found is None:
            found = self._runs[execution] = RunTargets(self._targets)
            if len(self._runs) > _RUNS_KEPT:
                self._runs.popitem(last=False)  # the oldest execution: long finished
        else:
            self._runs.move_to_end(execution)
        return found

    def context(
        self,
        *,
        run_id: str,
        claim_epoch: int,
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
            targets=self._targets_of(run_id, claim_epoch),
            target=target,
            account_key=account_key,
            message_id=message_id,
            remember_message_id=remember_message_id,
            mark_sending=mark_sending,
            files=self._files,
        )


def _batch_sending(targets: TargetService, files: FileStore | None) -> BatchSending:
    from mailwright.services.batches import BatchSending  # with the batch runner: only when executing

    return BatchSending(targets, files)


_RUNS_KEPT = 256  # executions whose resolved targets are kept (an executor has a few at once)


class RunTargets:
    """The targets of one execution of a run, each resolved (read, validated, its key decrypted) once.

    Its steps and the retries it waits for send with the settings it first saw; the
    connection test and the rate limiter are the services' own.
    """

    def __init__(self, targets: TargetService) -> None:
        self._targets = targets
        self._resolved: dict[tuple[str, str | None], ResolvedTarget] = {}

    @property
    def rate_limits(self) -> RateLimiter:
        return self._targets.rate_limits

    def resolve(self, ref: str, *, account_key: str | None = None) -> ResolvedTarget:
        found = self._resolved.get((ref, account_key))
        if found is None:
            found = self._resolved[(ref, account_key)] = self._targets.resolve(ref, account_key=account_key)
        return found

    async def test(self, ref: str) -> ConnectionTestReport:
        return await self._targets.test(ref)
