"""Email trigger watchers: new mail in a folder starts a workflow run, exactly once per mail.

One watcher task per enabled trigger. An IMAP watcher selects the folder, takes the
mail above the trigger's high-water mark (UIDs under the folder's UIDVALIDITY), then
waits in IDLE when the server offers it (re-IDLEing well within the 29 minutes servers
allow) or polls at the target's interval. A POP3 watcher polls and recognises mail by
UIDL and Message-ID. A mailbox that reports what changed in a folder since a cursor
(`ChangeFeed`: Microsoft Graph's delta queries) is followed by that cursor instead of a
UID mark, so mail moved into the folder is taken too, whatever its arrival time; the
mail is known by its stable id, and what was there at the first look is recorded as
skipped. Mail is fetched with BODY.PEEK, so it stays unread while its run
works; the after-success action (mark read, move, delete) is applied once the run has
succeeded, and never when it failed: then the mail stays where it was and is retried or
reported, as the trigger says.

Nothing here decides "once": `TriggerService.take` writes the mail's row and its run in
one transaction under a unique key, so two workers watching the same folder, a restart
or a reconnect can only try again and be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Any, Literal, Protocol

from mailwright import metrics
from mailwright.activities.context import Files, Targets
from mailwright.activities.read_email import ReadEmailInput, message_output
from mailwright.domain.capabilities import (
    ChangeFeed,
    ChangesExpiredError,
    FolderChanges,
    FolderMailbox,
    Mailbox,
    MessageDrop,
)
from mailwright.domain.runs import RunStatus
from mailwright.domain.triggers import AfterSuccessAction, EmailTrigger, matches
from mailwright.errors import MailwrightError, TargetError, ValidationError

log = logging.getLogger(__name__)

RECONCILE_SECONDS = 2.0  # how soon an enabled, disabled or edited trigger is noticed
HEARTBEAT_SECONDS = 30.0  # how often the watched triggers are marked alive (else they show "paused")
IDLE_SECONDS = 25 * 60  # re-IDLE before the 29 minutes after which servers may drop us
PENDING_CHECK_SECONDS = 1.0  # while runs are out, look for their outcomes this often
MAX_PER_SCAN = 100  # mail taken per pass, so a flood does not hold the connection for long
MAX_BACKOFF = 300.0
SKIPPED_PER_TRANSACTION = 500  # mail recorded as seen (a baseline) per transaction
POP3_FOLDER = "INBOX"
DEFAULT_POLL_SECONDS = 30.0  # when the target's type does not say
PURPOSE = "an email trigger"


TriggerStatus = Literal["starting", "polling", "idle", "paused", "errored", "disabled"]
SettledStatus = Literal["succeeded", "failed", "retrying", "started"]


@dataclass(frozen=True)
class TriggerPlan:
    """An enabled trigger as a watcher needs it."""

    state_id: str
    workflow_id: str
    workflow_name: str
    position: int
    trigger: EmailTrigger
    target_id: str
    target_type: str
    # Changes whenever the document, the target or its key changes: the watcher restarts.
    fingerprint: str
    status: str = "starting"  # "starting" once more after a watcher reported: it was re-enabled


@dataclass(frozen=True)
class Mail:
    """One mail a watcher found: its key, its Read Email fields, and whether it meets the conditions."""

    key: str
    message: dict[str, Any] | None
    start: bool = True


@dataclass(frozen=True)
class ChangePosition:
    """Where a trigger on a mailbox that reports changes stands."""

    uidvalidity: int | None  # the folder's, at the last look
    cursor: str | None  # where the next look starts (None: no look yet since the baseline was reset)
    last_uid: int | None  # the UID mark, kept from before the mailbox reported changes
    baseline_at: datetime | None


@dataclass(frozen=True)
class Outcome:
    """A taken mail whose run has finished: its after-success action or failure handling is due."""

    message_row_id: str
    workflow_id: str
    position: int
    target_id: str
    folder: str
    uidvalidity: int
    uid: int | None
    message_key: str
    run_id: str
    run_status: str
    attempts: int


@dataclass(frozen=True)
class Retry:
    """A mail whose run failed and that is due for a new run (on_failure: retry)."""

    message_row_id: str
    workflow_id: str
    position: int
    uid: int | None
    message_key: str
    attempts: int


class TriggerStore(Protocol):
    """The triggers' stored state and one-run-per-mail bookkeeping (services/triggers.py)."""

    def plans(self, pool: str | None = None) -> list[TriggerPlan]: ...

    def heartbeat(self, state_ids: list[str]) -> None: ...

    def set_status(self, state_id: str, status: TriggerStatus, error: str | None = None) -> None: ...

    def position(self, state_id: str) -> tuple[int | None, int | None, datetime | None]: ...

    def advance(self, state_id: str, *, uidvalidity: int, last_uid: int, baseline: bool = False) -> None: ...

    def mark_baseline(self, state_id: str) -> None: ...

    def change_position(self, state_id: str) -> ChangePosition: ...

    def known_keys(
        self, plan: TriggerPlan, *, folder: str, uidvalidity: int, among: Iterable[str] | None = None
    ) -> set[str]: ...

    def forget_skipped(
        self, plan: TriggerPlan, *, folder: str, uidvalidity: int, keys: list[str]
    ) -> None: ...

    def take(
        self,
        plan: TriggerPlan,
        *,
        folder: str,
        uidvalidity: int,
        message_key: str,
        message: dict[str, Any] | None,
        start: bool = True,
    ) -> str | None: ...

    def take_many(
        self,
        plan: TriggerPlan,
        *,
        folder: str,
        uidvalidity: int,
        mails: list[Mail],
        last_uid: int | None = None,
        cursor: str | None = None,
    ) -> list[str]: ...

    def outcomes(self, plan: TriggerPlan) -> list[Outcome]: ...

    def pending(self, plan: TriggerPlan) -> bool: ...

    def claim(self, message_row_id: str) -> bool: ...

    def settle(
        self,
        message_row_id: str,
        status: SettledStatus,
        *,
        error: str | None = None,
        retry_after: int | None = None,
    ) -> None: ...

    def due_retries(self, plan: TriggerPlan) -> list[Retry]: ...

    def restart(
        self, plan: TriggerPlan, retry: Retry, *, folder: str, message: dict[str, Any]
    ) -> str | None: ...


class TriggerHost(Protocol):
    """What the watchers use: the trigger store, the targets, and where attachments go."""

    @property
    def triggers(self) -> TriggerStore: ...

    @property
    def targets(self) -> Targets: ...

    @property
    def files(self) -> Files | None: ...


def describe(exc: BaseException) -> str:
    if isinstance(exc, MailwrightError):
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    return f"{type(exc).__name__}: {exc}"


class TriggerManager:
    """Starts, restarts and stops the watchers as triggers are enabled, edited and disabled."""

    def __init__(
        self,
        services: TriggerHost,
        *,
        reconcile_seconds: float = RECONCILE_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
        poll_seconds: float | None = None,
        pool: str | None = None,
    ) -> None:
        self.services = services
        self.pool = pool  # the worker pool this worker serves: only its targets' mailboxes are watched
        self.reconcile_seconds = reconcile_seconds
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds  # overrides the targets' polling interval (tests)
        self._watchers: dict[str, tuple[Watcher, asyncio.Task[None]]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        beat = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                try:
                    await self.reconcile()
                    if loop.time() - beat >= HEARTBEAT_SECONDS:
                        beat = loop.time()
                        await asyncio.to_thread(self.services.triggers.heartbeat, list(self._watchers))
                except Exception:
                    log.exception("email triggers: could not read or update the trigger states")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.reconcile_seconds)
        finally:
            await self.stop_all()

    async def reconcile(self) -> None:
        plans = {p.state_id: p for p in await asyncio.to_thread(self.services.triggers.plans, self.pool)}
        for state_id, (watcher, task) in list(self._watchers.items()):
            plan = plans.get(state_id)
            # Disabled and enabled again between two looks: the state says "starting" again.
            restarted = plan is not None and plan.status == "starting" and watcher.reported
            if plan is None or plan.fingerprint != watcher.plan.fingerprint or restarted or task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                del self._watchers[state_id]
        for state_id, plan in plans.items():
            if state_id not in self._watchers:
                watcher = Watcher(self, plan)
                task = asyncio.create_task(
                    watcher.run(), name=f"trigger {plan.workflow_name}#{plan.position}"
                )
                self._watchers[state_id] = (watcher, task)

    async def stop_all(self) -> None:
        tasks = [task for _, task in self._watchers.values()]
        self._watchers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def watching(self) -> int:
        return len(self._watchers)


class Watcher:
    """One trigger's loop: connect, take new mail, handle finished runs, wait; reconnect on errors."""

    def __init__(self, manager: TriggerManager, plan: TriggerPlan) -> None:
        self.manager = manager
        self.plan = plan
        self.triggers = manager.services.triggers
        self.backoff = 1.0
        self.read_input = ReadEmailInput(
            download_attachments=plan.trigger.download_attachments,
            attachment_size_limit=plan.trigger.attachment_size_limit,
        )
        self._pop3_keys: dict[str, str] = {}  # UIDL → key, for this session of the mailbox
        self.reported = False  # set once this watcher has written a state
        self.has_folders = True  # the target's mailbox has folders (IMAP), else one drop (POP3)

    async def report(self, status: TriggerStatus, error: str | None = None) -> None:
        await asyncio.to_thread(self.triggers.set_status, self.plan.state_id, status, error)
        self.reported = True

    def _label(self) -> str:
        return f"trigger {self.plan.position} of workflow {self.plan.workflow_name!r}"

    async def run(self) -> None:
        while True:
            try:
                resolved = await asyncio.to_thread(self.manager.services.targets.resolve, self.plan.target_id)
                try:
                    resolved.mailbox(PURPOSE)  # refused at once when the target holds no mail
                except ValidationError as exc:
                    raise TargetError(
                        exc.message,
                        target=resolved.target.display_name,
                        hint="point the trigger at a target that holds mail and save the workflow again",
                    ) from None
                poll = self.manager.poll_seconds or resolved.poll_seconds() or DEFAULT_POLL_SECONDS
                self.has_folders = resolved.has_folders()
                if self.has_folders:
                    async with resolved.mailbox(PURPOSE, folders=True) as mailbox:
                        assert isinstance(mailbox, FolderMailbox)
                        if isinstance(mailbox, ChangeFeed):
                            await self._watch_changes(mailbox, mailbox, poll)
                        else:
                            await self._watch_imap(mailbox, poll)
                else:
                    await self._watch_pop3(functools.partial(resolved.mailbox, PURPOSE, folders=False), poll)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = describe(exc)
                log.warning("%s: %s; trying again in %.0f s", self._label(), reason, self.backoff)
                metrics.trigger_failed(workflow=self.plan.workflow_name, trigger=self.plan.position)
                await self.report("errored", reason)
            await asyncio.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def _checked(self) -> None:
        """A look at the mailbox went through: counted, and the backoff starts over."""
        self.backoff = 1.0
        metrics.trigger_checked(workflow=self.plan.workflow_name, trigger=self.plan.position)

    def _message(self, uid: int, raw: bytes) -> dict[str, Any]:
        output = message_output(uid, raw, self.read_input, files=self.manager.services.files)
        assert output is not None  # no has_attachment filter: every message has an output
        return output

    # --- IMAP -------------------------------------------------------------------

    async def _watch_imap(self, imap: FolderMailbox, poll: float) -> None:
        folder = self.plan.trigger.folder
        use_idle = "IDLE" in imap.capabilities
        while True:
            uidvalidity, _count = await imap.select(folder)
            more = await self._scan_imap(imap, uidvalidity)
            pending = await self._outcomes_imap(imap, uidvalidity)
            self._checked()
            if more:
                continue  # a flood: take the next batch at once
            status: TriggerStatus = "idle" if use_idle else "polling"
            await self.report(status)
            wait = PENDING_CHECK_SECONDS if pending else (self.manager.idle_seconds if use_idle else poll)
            if use_idle:
                await imap.idle(timeout=wait)
            else:
                await asyncio.sleep(wait)

    async def _baseline(self, imap: FolderMailbox, uidvalidity: int) -> int:
        stored, last_uid, baseline_at = await asyncio.to_thread(self.triggers.position, self.plan.state_id)
        if stored == uidvalidity and last_uid is not None:
            return last_uid
        if stored is not None and stored != uidvalidity:
            log.warning(
                "%s: folder %r has a new UIDVALIDITY (%s, was %s): its UIDs were renumbered; "
                "taking only mail that arrives from now on",
                self._label(),
                self.plan.trigger.folder,
                uidvalidity,
                stored,
            )
        if self.plan.trigger.include_existing and stored is None and baseline_at is None:
            start = 0
        elif imap.uidnext:
            start = imap.uidnext - 1
        else:
            start = max(await imap.search_uids("ALL"), default=0)
        await asyncio.to_thread(
            self.triggers.advance, self.plan.state_id, uidvalidity=uidvalidity, last_uid=start, baseline=True
        )
        return start

    async def _scan_imap(self, imap: FolderMailbox, uidvalidity: int) -> bool:
        """Take the mail above the high-water mark; True when more than one batch was waiting."""
        last_uid = await self._baseline(imap, uidvalidity)
        found = await imap.search_uids(f"UID {last_uid + 1}:*")
        # "N:*" always names the newest message, even when it is below N.
        newer = sorted(u for u in found if u > last_uid)
        uids = newer[:MAX_PER_SCAN]
        if not uids:
            return False
        fetched = await imap.fetch_rfc822(uids)
        mails = [self._mail(str(uid), self._message(uid, fetched[uid])) for uid in uids if uid in fetched]
        # One transaction for the batch. The mark only saves fetching again: the unique
        # key is what keeps it one run per mail.
        await asyncio.to_thread(
            self.triggers.take_many,
            self.plan,
            folder=self.plan.trigger.folder,
            uidvalidity=uidvalidity,
            mails=mails,
            last_uid=uids[-1],
        )
        return len(newer) > len(uids)

    def _mail(self, key: str, message: dict[str, Any]) -> Mail:
        return Mail(key=key, message=message, start=matches(self.plan.trigger.conditions, message))

    async def _take(self, *, folder: str, uidvalidity: int, key: str, message: dict[str, Any]) -> None:
        mails = [self._mail(key, message)]
        await asyncio.to_thread(
            self.triggers.take_many, self.plan, folder=folder, uidvalidity=uidvalidity, mails=mails
        )

    async def _outcomes_imap(self, imap: FolderMailbox, uidvalidity: int) -> bool:
        """Apply after-success actions and failure handling; True while runs are still out."""
        for outcome in await asyncio.to_thread(self.triggers.outcomes, self.plan):
            if await asyncio.to_thread(self.triggers.claim, outcome.message_row_id):
                await self._settle_imap(imap, uidvalidity, outcome)
        for retry in await asyncio.to_thread(self.triggers.due_retries, self.plan):
            await self._retry_imap(imap, uidvalidity, retry)
        return await asyncio.to_thread(self.triggers.pending, self.plan)

    async def _settle_imap(self, imap: FolderMailbox, uidvalidity: int, outcome: Outcome) -> None:
        if outcome.run_status != RunStatus.SUCCEEDED:
            await self._failed(outcome)
            return
        if outcome.uidvalidity != uidvalidity or outcome.uid is None:
            await asyncio.to_thread(
                self.triggers.settle,
                outcome.message_row_id,
                "failed",
                error="the run succeeded, but the folder's UIDVALIDITY changed since: "
                "the after-success action was not applied",
            )
            return
        after = self.plan.trigger.after_success
        try:
            if after.action is AfterSuccessAction.MARK_READ:
                await imap.add_flags([outcome.uid], ["\\Seen"])
            elif after.action is AfterSuccessAction.MOVE:
                assert after.folder is not None
                await imap.create_folder(after.folder)  # a missing folder is made, as a mail client would
                await imap.move([outcome.uid], after.folder)
            elif after.action is AfterSuccessAction.DELETE:
                await imap.delete([outcome.uid])
        except Exception:
            # The connection is suspect: hand the mail back, reconnect, and try again.
            await asyncio.to_thread(self.triggers.settle, outcome.message_row_id, "started")
            raise
        await asyncio.to_thread(self.triggers.settle, outcome.message_row_id, "succeeded")

    async def _failed(self, outcome: Outcome) -> None:
        policy = self.plan.trigger.on_failure
        if (
            outcome.run_status == RunStatus.FAILED
            and policy.action == "retry"
            and outcome.attempts < policy.max_attempts
        ):
            await asyncio.to_thread(
                self.triggers.settle,
                outcome.message_row_id,
                "retrying",
                error=f"run {outcome.run_id} failed (attempt {outcome.attempts} of {policy.max_attempts})",
                retry_after=policy.retry_after,
            )
            return
        where = repr(outcome.folder) if self.has_folders else "the mailbox"
        await asyncio.to_thread(
            self.triggers.settle,
            outcome.message_row_id,
            "failed",
            error=f"run {outcome.run_id} {outcome.run_status} after {outcome.attempts} attempt(s); "
            f"the mail stays in {where}, untouched",
        )

    async def _retry_imap(self, imap: FolderMailbox, uidvalidity: int, retry: Retry) -> None:
        fetched = await imap.fetch_rfc822([retry.uid]) if retry.uid is not None else {}
        raw = fetched.get(retry.uid) if retry.uid is not None else None
        if raw is None or retry.uid is None:
            await asyncio.to_thread(
                self.triggers.settle,
                retry.message_row_id,
                "failed",
                error="not retried: the mail is no longer in the folder",
            )
            return
        await asyncio.to_thread(
            self.triggers.restart,
            self.plan,
            retry,
            folder=self.plan.trigger.folder,
            message=self._message(retry.uid, raw),
        )

    # --- a mailbox that reports changes (Graph) ------------------------------------

    async def _watch_changes(self, box: FolderMailbox, feed: ChangeFeed, poll: float) -> None:
        uidvalidity, _count = await box.select(self.plan.trigger.folder)
        while True:
            await self._scan_changes(box, feed, uidvalidity)
            pending = await self._outcomes_imap(box, uidvalidity)
            self._checked()
            await self.report("polling")
            await asyncio.sleep(PENDING_CHECK_SECONDS if pending else poll)

    async def _look(self, feed: ChangeFeed, uidvalidity: int) -> tuple[FolderChanges, Callable[[int], bool]]:
        """The folder's changes since the trigger's cursor, and which of the mail not seen before to take.

        The mail not seen before is what arrived or was moved in since the cursor. The
        first look is a baseline (all of it is taken only with include_existing); a
        trigger that kept a UID mark before takes what is above it; a new UIDVALIDITY
        (the folder was made again) starts from now on; an expired cursor is a new look at
        the whole folder, where what the trigger has not seen is what came meanwhile.
        """
        folder = self.plan.trigger.folder
        where = await asyncio.to_thread(self.triggers.change_position, self.plan.state_id)
        same = where.uidvalidity == uidvalidity
        if same and where.cursor is not None:
            try:
                return await feed.changes(folder, where.cursor), lambda _uid: True
            except ChangesExpiredError as exc:
                log.warning(
                    "%s: %s; looking at the whole folder again: the mail not taken yet is taken, none twice",
                    self._label(),
                    describe(exc),
                )
                return await feed.changes(folder, None), lambda _uid: True
        changes = await feed.changes(folder, None)
        if where.uidvalidity is None and where.baseline_at is None:
            include = self.plan.trigger.include_existing
            return changes, lambda _uid: include
        if same and where.last_uid is not None:
            mark = where.last_uid
            return changes, lambda uid: uid > mark
        if where.uidvalidity is not None and not same:
            log.warning(
                "%s: folder %r has a new UIDVALIDITY (%s, was %s): it was made again; "
                "taking only mail that arrives from now on",
                self._label(),
                folder,
                uidvalidity,
                where.uidvalidity,
            )
        return changes, lambda _uid: False

    async def _scan_changes(self, box: FolderMailbox, feed: ChangeFeed, uidvalidity: int) -> None:
        """Take the mail that arrived or was moved in since the last look, then keep the new cursor."""
        folder = self.plan.trigger.folder
        changes, wanted = await self._look(feed, uidvalidity)
        known = await asyncio.to_thread(
            self.triggers.known_keys,
            self.plan,
            folder=folder,
            uidvalidity=uidvalidity,
            among=[key for _, key in changes.changed],
        )
        # A change to mail seen before (read, flagged, taken, skipped) is not new mail.
        unseen = [(uid, key) for uid, key in changes.changed if key not in known]
        take = [(uid, key) for uid, key in unseen if wanted(uid)]
        for start in range(0, len(take), MAX_PER_SCAN):
            batch = take[start : start + MAX_PER_SCAN]
            fetched = await box.fetch_rfc822([uid for uid, _ in batch])
            mails = [
                self._mail(key, self._message(uid, fetched[uid])) for uid, key in batch if uid in fetched
            ]
            await asyncio.to_thread(
                self.triggers.take_many,
                self.plan,
                folder=folder,
                uidvalidity=uidvalidity,
                mails=mails,
                last_uid=batch[-1][0],
            )
        # What is there and not taken is recorded as seen, so that a change to it later is not
        # taken for new mail; once it leaves, it is forgotten: moved back in, it is new mail.
        skipped = [Mail(key=key, message={"uid": uid}, start=False) for uid, key in unseen if not wanted(uid)]
        for start in range(0, len(skipped), SKIPPED_PER_TRANSACTION):
            await asyncio.to_thread(
                self.triggers.take_many,
                self.plan,
                folder=folder,
                uidvalidity=uidvalidity,
                mails=skipped[start : start + SKIPPED_PER_TRANSACTION],
            )
        if changes.removed:
            await asyncio.to_thread(
                self.triggers.forget_skipped,
                self.plan,
                folder=folder,
                uidvalidity=uidvalidity,
                keys=changes.removed,
            )
        await asyncio.to_thread(
            self.triggers.take_many,
            self.plan,
            folder=folder,
            uidvalidity=uidvalidity,
            mails=[],
            cursor=changes.cursor,
        )

    # --- POP3 -------------------------------------------------------------------

    async def _watch_pop3(
        self, open_drop: Callable[[], AbstractAsyncContextManager[Mailbox]], poll: float
    ) -> None:
        while True:
            async with open_drop() as mailbox:
                assert isinstance(mailbox, MessageDrop)
                settled = await self._pass_pop3(mailbox)
            # Deletions take effect at QUIT, so the mail counts as handled only after it.
            for row_id in settled:
                await asyncio.to_thread(self.triggers.settle, row_id, "succeeded")
            self._checked()
            await self.report("polling")
            pending = await asyncio.to_thread(self.triggers.pending, self.plan)
            await asyncio.sleep(PENDING_CHECK_SECONDS if pending else poll)

    async def _pop3_key(self, pop3: MessageDrop, number: int, uidl: str) -> str:
        known = self._pop3_keys.get(uidl)
        if known is None:
            headers = BytesHeaderParser(policy=default_policy).parsebytes(await pop3.top(number, 0))
            message_id = str(headers.get("Message-ID") or "").strip()
            known = f"{uidl} {message_id}".strip()
            self._pop3_keys[uidl] = known
        return known

    async def _pass_pop3(self, pop3: MessageDrop) -> list[str]:
        listing = await pop3.uidl()
        _validity, _last, baseline_at = await asyncio.to_thread(self.triggers.position, self.plan.state_id)
        first = baseline_at is None and not self.plan.trigger.include_existing
        known = await asyncio.to_thread(
            self.triggers.known_keys, self.plan, folder=POP3_FOLDER, uidvalidity=0
        )
        by_key: dict[str, int] = {}
        taken = 0
        for number, uidl in sorted(listing.items()):
            key = await self._pop3_key(pop3, number, uidl)
            by_key[key] = number
            if key in known or taken >= MAX_PER_SCAN:
                continue
            if first:
                await asyncio.to_thread(
                    self.triggers.take,
                    self.plan,
                    folder=POP3_FOLDER,
                    uidvalidity=0,
                    message_key=key,
                    message=None,
                    start=False,
                )
                continue
            message = self._message(number, await pop3.retrieve(number))
            message["uidl"] = uidl
            await self._take(folder=POP3_FOLDER, uidvalidity=0, key=key, message=message)
            taken += 1
        if baseline_at is None:
            await asyncio.to_thread(self.triggers.mark_baseline, self.plan.state_id)
        return await self._outcomes_pop3(pop3, by_key)

    async def _outcomes_pop3(self, pop3: MessageDrop, by_key: dict[str, int]) -> list[str]:
        settled: list[str] = []
        for outcome in await asyncio.to_thread(self.triggers.outcomes, self.plan):
            if not await asyncio.to_thread(self.triggers.claim, outcome.message_row_id):
                continue
            if outcome.run_status != RunStatus.SUCCEEDED:
                await self._failed(outcome)
                continue
            number = by_key.get(outcome.message_key)
            if self.plan.trigger.after_success.action is AfterSuccessAction.DELETE and number is not None:
                await pop3.delete(number)
            settled.append(outcome.message_row_id)
        for retry in await asyncio.to_thread(self.triggers.due_retries, self.plan):
            number = by_key.get(retry.message_key)
            if number is None:
                await asyncio.to_thread(
                    self.triggers.settle,
                    retry.message_row_id,
                    "failed",
                    error="not retried: the mail is no longer in the mailbox",
                )
                continue
            message = self._message(number, await pop3.retrieve(number))
            message["uidl"] = retry.message_key.split(" ", 1)[0]
            await asyncio.to_thread(
                self.triggers.restart, self.plan, retry, folder=POP3_FOLDER, message=message
            )
        return settled
