"""A counting SMTP server for crash and retry tests: each accepted message is fsynced to a log before its 250.

The log is the ground truth of "what arrived, how many times", readable from any process
while the server runs, so a test can SIGKILL or SIGSTOP Mailwright's workers and count
afterwards.  Faults (dropped connections around the store, 4xx at RCPT, a slow final reply,
a delay on every reply) are set at start and can be changed while the server runs.

In-process (a daemon thread with its own event loop, for pytest)::

    with CountingSMTPServer(tmp_path / "smtp", faults=FaultPlan(drop_after_store=Pick(every=10))) as server:
        ...  # send to 127.0.0.1:server.port
        server.set_faults(FaultPlan())           # from now on, no faults
        server.log.wait_for_total(200)
        assert not server.log.duplicates()

As its own process (a worker can be killed while the server keeps counting)::

    python -m tests.support.counting_smtp --dir DIR --port 0 [--port-file F] [faults...]

prints the port as its first stdout line (and writes it to ``--port-file``), stops on SIGTERM
or SIGINT, and re-reads the JSON plan in ``DIR/faults.json`` (``--faults-file``) before every
decision: ``write_faults(path, plan)`` replaces it atomically, and every command that arrives
after it returns sees the new plan.  ``CountingSMTPProcess`` starts and stops such a process.

Files in DIR (JSON lines, appended, each line complete once its newline is there):

* ``messages.jsonl``: one record per accepted message (``LoggedMessage``), written and fsynced
  before the 250 is sent: Message-ID, envelope sender and accepted recipients, time,
  connection, size, and the fault that hit it if any.  Lines are group-committed by one
  writer thread, so many connections cost one fsync per group, not one each.
* ``events.jsonl``: what each fault did (``FaultEvent``), also written before the fault
  acts, so a client that sees the disconnect can already read why.

The server offers ESMTP with PIPELINING (commands answered in order, those due together in
one write), 8BITMIME, SMTPUTF8, SIZE and ENHANCEDSTATUSCODES; no TLS, no AUTH: an open relay
meant for loopback only.  It is written on asyncio streams rather than aiosmtpd, which
cannot offer PIPELINING and answers each command with its own write.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import os
import queue
import random
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tests.support.smtpserver import _BackgroundServer

__all__ = [
    "EVENTS_FILE",
    "FAULTS_FILE",
    "MESSAGES_FILE",
    "CountingLog",
    "CountingSMTPProcess",
    "CountingSMTPServer",
    "FaultEvent",
    "FaultKind",
    "FaultPlan",
    "LoggedMessage",
    "Pick",
    "RcptDefer",
    "SlowReply",
    "build_parser",
    "main",
    "message_id_of",
    "plan_from_args",
    "write_faults",
]

MESSAGES_FILE = "messages.jsonl"
EVENTS_FILE = "events.jsonl"
FAULTS_FILE = "faults.json"
SERVER_NAME = "counting-smtp.localhost"
SIZE_LIMIT = 100 * 1024 * 1024
# A line (command or body) may be this long; longer ones end the connection.
LINE_LIMIT = 1024 * 1024
# The writer thread commits at most this many lines per fsync.
GROUP_LIMIT = 2000
REPO_ROOT = Path(__file__).resolve().parents[2]

FaultKind = Literal["drop_before_store", "drop_after_store", "slow_reply", "rcpt_defer", "plan"]


# --------------------------------------------------------------------------------------
# The fault plan (data; JSON in the faults file)
# --------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Pick(_Model):
    """Which messages a fault hits, counted at each final dot since the plan took effect.

    ``Pick()`` hits every message; ``Pick(every=3)`` the 3rd, 6th, 9th...;
    ``Pick(fraction=0.1)`` each message with probability 0.1, drawn from a generator seeded
    with the plan's ``seed`` (the same sequence of hits and misses every run).  ``limit``
    stops the fault after that many hits.
    """

    every: int | None = Field(default=None, ge=1)
    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    limit: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_rule(self) -> Self:
        if self.every is not None and self.fraction is not None:
            raise ValueError("give `every` or `fraction`, not both")
        return self


class SlowReply(Pick):
    """Store the message, then wait ``seconds`` before the 250 (a client may give up first)."""

    seconds: float = Field(gt=0)


class RcptDefer(_Model):
    """Answer RCPT with a 4xx for some recipients.

    A recipient is chosen when it is in ``addresses`` (case-insensitive) or, with
    ``fraction``, when a hash of the seed and the address falls below it: the same
    addresses are chosen on every attempt and in every run.  ``times=K`` defers each
    chosen recipient's first K RCPTs only (so a retry succeeds); ``None`` defers always.
    """

    addresses: tuple[str, ...] = ()
    fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    times: int | None = Field(default=None, ge=0)
    reply: str = "451 4.3.0 Temporary failure (counting_smtp fault), try again later"

    @field_validator("reply")
    @classmethod
    def _transient_or_permanent(cls, value: str) -> str:
        code = value[:3]
        if not (code.isdigit() and code[0] in "45" and value[3:4] in ("", " ")):
            raise ValueError("reply must start with a 4xx or 5xx code, e.g. '451 4.3.0 try later'")
        return value


class FaultPlan(_Model):
    """Every fault the server applies; the default plan has none.

    At the final dot, ``drop_before_store`` is decided first (the message is not stored and
    the connection is cut without a reply), then ``drop_after_store`` (stored and fsynced,
    then cut: the client cannot know it arrived), then ``slow_reply``.  A message hit by one
    is not counted by the later ones.  ``reply_delay`` delays every reply (the greeting
    included) by that many seconds after its command arrived, like a relay that far away;
    pipelined commands are answered together one delay later.
    """

    drop_before_store: Pick | None = None
    drop_after_store: Pick | None = None
    slow_reply: SlowReply | None = None
    rcpt_defer: RcptDefer | None = None
    reply_delay: float = Field(default=0.0, ge=0.0)
    seed: int = 0


def write_faults(path: Path | str, plan: FaultPlan) -> None:
    """Replace the faults file atomically (a reader never sees half a plan)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(plan.model_dump_json(), encoding="utf-8")
    os.replace(temporary, target)


def _below(fraction: float, *parts: object) -> bool:
    """A stable pseudo-random choice: the same parts give the same answer in every process."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class _PickState:
    def __init__(self, pick: Pick, *, seed: int, salt: str) -> None:
        self.pick = pick
        self.hits = 0
        self._random = random.Random(f"{seed}:{salt}")

    def hit(self, number: int) -> bool:
        pick = self.pick
        if pick.fraction is not None:
            # Drawn even past the limit, so a limit does not shift the sequence.
            chosen = self._random.random() < pick.fraction
        elif pick.every is not None:
            chosen = number % pick.every == 0
        else:
            chosen = True
        if not chosen or (pick.limit is not None and self.hits >= pick.limit):
            return False
        self.hits += 1
        return True


class _FaultState:
    """A plan and its counters: a new plan starts from zero (message numbers, budgets)."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.messages = 0
        rules: list[tuple[FaultKind, Pick | None]] = [
            ("drop_before_store", plan.drop_before_store),
            ("drop_after_store", plan.drop_after_store),
            ("slow_reply", plan.slow_reply),
        ]
        # In this order: a message hit by one rule is not offered to the later ones.
        self._picks = [
            (kind, _PickState(pick, seed=plan.seed, salt=kind)) for kind, pick in rules if pick is not None
        ]
        self._deferred: Counter[str] = Counter()

    def message_fault(self) -> FaultKind | None:
        """The fault for the message whose final dot just arrived, if any."""
        self.messages += 1
        for kind, state in self._picks:
            if state.hit(self.messages):
                return kind
        return None

    def rcpt_reply(self, address: str) -> str | None:
        """The 4xx/5xx reply for this RCPT, or None to accept it."""
        rule = self.plan.rcpt_defer
        if rule is None:
            return None
        key = address.casefold()
        chosen = key in {a.casefold() for a in rule.addresses} or (
            rule.fraction > 0 and _below(rule.fraction, self.plan.seed, key)
        )
        if not chosen or (rule.times is not None and self._deferred[key] >= rule.times):
            return None
        self._deferred[key] += 1
        return rule.reply


# --------------------------------------------------------------------------------------
# Records and the reader
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedMessage:
    """One accepted message, as ``messages.jsonl`` holds it."""

    seq: int
    """Order of storing within one server start."""
    server: str
    """Which server start stored it (a restart gives a new value)."""
    connection: int
    """Connection number within that server start."""
    time: float
    """Unix time of the store."""
    message_id: str
    """The Message-ID header's value, angle brackets included; "" when there is none."""
    mail_from: str
    rcpt_tos: tuple[str, ...]
    """Accepted recipients only."""
    size: int
    fault: FaultKind | None
    """``drop_after_store`` or ``slow_reply`` when that fault hit this message."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoggedMessage:
        return cls(**{**data, "rcpt_tos": tuple(data["rcpt_tos"])})


@dataclass(frozen=True)
class FaultEvent:
    """One fault acting (or a new plan taking effect), as ``events.jsonl`` holds it."""

    time: float
    server: str
    kind: FaultKind
    connection: int | None = None
    message_id: str | None = None
    recipient: str | None = None
    detail: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultEvent:
        return cls(**data)


class _JsonlTail:
    """Reads a JSON-lines file incrementally; a line without its newline is not yet written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rows: list[dict[str, Any]] = []

    def rows(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                if os.fstat(handle.fileno()).st_size < self._offset:  # replaced by a new file
                    self._offset, self._rows = 0, []
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self._rows
        complete = chunk.rfind(b"\n") + 1
        for line in chunk[:complete].splitlines():
            if line.strip():
                self._rows.append(json.loads(line))
        self._offset += complete
        return self._rows


class CountingLog:
    """Reads what a counting server stored in ``directory``; works from any process, any time."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._messages = _JsonlTail(self.directory / MESSAGES_FILE)
        self._events = _JsonlTail(self.directory / EVENTS_FILE)

    def messages(self) -> list[LoggedMessage]:
        return [LoggedMessage.from_json(row) for row in self._messages.rows()]

    def events(self, kind: FaultKind | None = None) -> list[FaultEvent]:
        events = [FaultEvent.from_json(row) for row in self._events.rows()]
        return [e for e in events if kind is None or e.kind == kind]

    def total(self) -> int:
        """Messages stored (each copy counts)."""
        return len(self._messages.rows())

    def counts(self) -> Counter[str]:
        """Copies stored per Message-ID (messages without one are counted under "")."""
        return Counter(str(row["message_id"]) for row in self._messages.rows())

    def duplicates(self) -> dict[str, int]:
        """Message-IDs stored more than once, with their number of copies."""
        return {mid: n for mid, n in self.counts().items() if n > 1 and mid}

    def recipients(self) -> Counter[str]:
        """Deliveries per accepted envelope recipient."""
        return Counter(rcpt for row in self._messages.rows() for rcpt in row["rcpt_tos"])

    def wait_until(
        self, predicate: Callable[[CountingLog], bool], *, timeout: float = 30.0, what: str = "condition"
    ) -> None:
        """Poll the files until ``predicate(self)`` holds; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout} s ({self.total()} messages stored)")
            time.sleep(0.02)

    def wait_for_total(self, count: int, *, timeout: float = 30.0) -> int:
        """Wait until at least ``count`` messages are stored; returns the total."""
        self.wait_until(lambda log: log.total() >= count, timeout=timeout, what=f"{count} messages")
        return self.total()


# --------------------------------------------------------------------------------------
# The durable appender (a group commit in one thread)
# --------------------------------------------------------------------------------------

_File = Literal["messages", "events"]
_Pending = tuple[_File, bytes, concurrent.futures.Future[None]]


class _Appender:
    """Appends lines in a thread; each group of waiting lines is written and fsynced once."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self._fds: dict[_File, int] = {
            "messages": os.open(directory / MESSAGES_FILE, flags, 0o644),
            "events": os.open(directory / EVENTS_FILE, flags, 0o644),
        }
        # The files' names must survive a crash too, not only their contents.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="counting-smtp-log", daemon=True)
        self._thread.start()

    def append(self, file: _File, record: dict[str, Any]) -> concurrent.futures.Future[None]:
        """Resolved once the line is on disk (fsync returned)."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self._queue.put((file, line, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        for fd in self._fds.values():
            os.close(fd)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            stop = False
            while len(group) < GROUP_LIMIT:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stop = True
                    break
                group.append(following)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Pending]) -> None:
        # A future whose waiter was cancelled (a server stopping) is still written.
        waiters = [future for _, _, future in group if future.set_running_or_notify_cancel()]
        try:
            for file, fd in self._fds.items():
                data = b"".join(line for kind, line, _ in group if kind == file)
                if data:
                    _write_all(fd, data)
                    os.fsync(fd)
        except OSError as exc:
            for future in waiters:
                future.set_exception(exc)
        else:
            for future in waiters:
                future.set_result(None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --------------------------------------------------------------------------------------
# The SMTP side
# --------------------------------------------------------------------------------------

_EHLO_LINES = ("PIPELINING", "8BITMIME", "SMTPUTF8", f"SIZE {SIZE_LIMIT}", "ENHANCEDSTATUSCODES")


def _reply(code: int, text: str) -> bytes:
    return f"{code} {text}\r\n".encode()


def _path_argument(argument: str) -> str | None:
    """``FROM:<a@b> BODY=8BITMIME`` -> ``a@b`` ("" for ``<>``); None when malformed."""
    start, end = argument.find("<"), argument.find(">")
    if start < 0 or end < start:
        return None
    return argument[start + 1 : end]


def _declared_size(argument: str) -> int:
    for parameter in argument[argument.find(">") + 1 :].split():
        name, _, value = parameter.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def message_id_of(content: bytes) -> str:
    """The Message-ID header's value (folding undone), or "" when there is none."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    value = BytesHeaderParser(policy=compat32).parsebytes(head).get("Message-ID")
    return "" if value is None else " ".join(str(value).split())


class _Replies:
    """The replies of one connection: sent in order, each at its due time, those due together in one write.

    A pipelining client's commands that arrive together are therefore answered together, and
    a slow reply holds back the replies queued behind it, as on a real server.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._items: deque[tuple[float, bytes, Literal["", "close", "abort"]]] = deque()
        self._queued = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def send(self, payload: bytes, *, due: float) -> None:
        self._items.append((due, payload, ""))
        self._queued.set()

    async def end(self, action: Literal["close", "abort"], *, due: float, payload: bytes = b"") -> None:
        """Send what is queued (and ``payload``), then close or abort; returns when done."""
        self._items.append((due, payload, action))
        self._queued.set()
        await self._task

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            while not self._items:
                self._queued.clear()
                await self._queued.wait()
            wait = self._items[0][0] - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            out = bytearray()
            action = ""
            now = self._loop.time()
            while self._items and self._items[0][0] <= now and not action:
                _, payload, action = self._items.popleft()
                out += payload
            if out:
                self._writer.write(out)
            if action == "abort":
                self._writer.transport.abort()
                return
            try:
                await self._writer.drain()
            except ConnectionError:
                return  # the client is gone; the reading side notices too
            if action == "close":
                self._writer.close()
                return


class _Core:
    """What both modes share: the log, the fault plan (and its file), and the SMTP sessions."""

    def __init__(self, directory: Path, *, plan: FaultPlan, faults_file: Path | None) -> None:
        self.directory = directory
        self.server_id = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.writers: set[asyncio.StreamWriter] = set()
        self._appender = _Appender(directory)
        self._initial = plan
        self._state = _FaultState(plan)
        self._faults_file = faults_file
        self._faults_stamp: tuple[int, int, int] | None = None
        self._connections = itertools.count(1)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._appender.close()

    # ---- the plan ----

    def set_plan(self, plan: FaultPlan, *, source: str = "set_faults") -> None:
        # One assignment: the loop thread sees the old state or the new one, never a mix.
        self._state = _FaultState(plan)
        self._appender.append("events", self._event("plan", detail=f"{source}: {plan.model_dump_json()}"))

    @property
    def plan(self) -> FaultPlan:
        return self._state.plan

    def state(self) -> _FaultState:
        """The current plan, after taking up a change of the faults file (a stat per call)."""
        if self._faults_file is not None:
            self._reload(self._faults_file)
        return self._state

    def _reload(self, path: Path) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            if self._faults_stamp is not None:  # removed: back to the plan given at start
                self._faults_stamp = None
                self.set_plan(self._initial, source=f"{path} removed")
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._faults_stamp:
            return
        self._faults_stamp = stamp
        try:
            plan = FaultPlan.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            print(f"counting_smtp: {path}: {exc}; the plan is unchanged", file=sys.stderr, flush=True)
            return
        self.set_plan(plan, source=str(path))

    # ---- the log ----

    def _event(self, kind: FaultKind, **fields: object) -> dict[str, Any]:
        return {"time": time.time(), "server": self.server_id, "kind": kind, **fields}

    async def event(self, kind: FaultKind, **fields: object) -> None:
        await asyncio.wrap_future(self._appender.append("events", self._event(kind, **fields)))

    async def store(self, record: dict[str, Any]) -> int:
        """Append the message's record and wait for its fsync; returns its seq."""
        seq = next(self._seq)
        line = {"seq": seq, "server": self.server_id, "time": time.time(), **record}
        await asyncio.wrap_future(self._appender.append("messages", line))
        return seq

    # ---- connections ----

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await _Session(self, reader, writer, next(self._connections)).run()
        finally:
            self.writers.discard(writer)

    def abort_connections(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()


class _Session:
    """One SMTP connection."""

    def __init__(
        self, core: _Core, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        self.core = core
        self.reader = reader
        self.writer = writer
        self.number = number
        self.loop = asyncio.get_running_loop()
        self.replies = _Replies(writer)
        self.greeted = False
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []

    async def run(self) -> None:
        try:
            delay = self.core.state().plan.reply_delay
            self.replies.send(_reply(220, f"{SERVER_NAME} ESMTP counting_smtp"), due=self.loop.time() + delay)
            while await self._command():
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a reset, or a line over LINE_LIMIT (StreamReader raises ValueError)
        finally:
            self.replies.cancel()
            if not self.writer.transport.is_closing():
                self.writer.close()

    async def _command(self) -> bool:
        """Read and answer one command; False when the connection is over."""
        line = await self.reader.readline()
        if not line.endswith(b"\n"):
            return False  # the client went away (mid-line or between commands)
        state = self.core.state()
        due = self.loop.time() + state.plan.reply_delay
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        if verb in ("EHLO", "HELO"):
            self.greeted = True
            self._reset()
            lines = [SERVER_NAME, *_EHLO_LINES] if verb == "EHLO" else [SERVER_NAME]
            payload = "".join(f"250-{item}\r\n" for item in lines[:-1]) + f"250 {lines[-1]}\r\n"
            self.replies.send(payload.encode(), due=due)
        elif verb == "MAIL":
            self.replies.send(self._mail(argument), due=due)
        elif verb == "RCPT":
            self.replies.send(await self._rcpt(argument, state), due=due)
        elif verb == "DATA":
            return await self._data(due)
        elif verb == "RSET":
            self._reset()
            self.replies.send(_reply(250, "2.0.0 Ok"), due=due)
        elif verb == "NOOP":
            self.replies.send(_reply(250, "2.0.0 Ok"), due=due)
        elif verb == "VRFY":
            self.replies.send(_reply(252, "2.5.0 Cannot VRFY, but will accept"), due=due)
        elif verb == "QUIT":
            await self.replies.end("close", due=due, payload=_reply(221, "2.0.0 Bye"))
            return False
        else:
            self.replies.send(_reply(502, "5.5.2 Command not recognized"), due=due)
        return True

    def _reset(self) -> None:
        self.mail_from = None
        self.rcpt_tos = []

    def _mail(self, argument: str) -> bytes:
        if not self.greeted:
            return _reply(503, "5.5.1 Send EHLO first")
        if self.mail_from is not None:
            return _reply(503, "5.5.1 Nested MAIL command")
        address = _path_argument(argument) if argument.upper().startswith("FROM:") else None
        if address is None:
            return _reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
        if _declared_size(argument) > SIZE_LIMIT:
            return _reply(552, "5.3.4 Message size exceeds fixed limit")
        self.mail_from = address
        return _reply(250, "2.1.0 Ok")

    async def _rcpt(self, argument: str, state: _FaultState) -> bytes:
        if self.mail_from is None:
            return _reply(503, "5.5.1 Need MAIL command")
        address = _path_argument(argument) if argument.upper().startswith("TO:") else None
        if not address:
            return _reply(501, "5.5.4 Syntax: RCPT TO:<address>")
        refusal = state.rcpt_reply(address)
        if refusal is not None:
            await self.core.event("rcpt_defer", connection=self.number, recipient=address, detail=refusal)
            return refusal.encode() + b"\r\n"
        self.rcpt_tos.append(address)
        return _reply(250, "2.1.5 Ok")

    async def _data(self, due: float) -> bool:
        if self.mail_from is None:
            self.replies.send(_reply(503, "5.5.1 Need MAIL command"), due=due)
            return True
        if not self.rcpt_tos:
            self.replies.send(_reply(554, "5.5.1 No valid recipients"), due=due)
            return True
        self.replies.send(_reply(354, "End data with <CR><LF>.<CR><LF>"), due=due)
        content = await self._body()
        if content is None:
            return False
        mail_from, rcpt_tos = self.mail_from, self.rcpt_tos
        self._reset()
        state = self.core.state()
        due = self.loop.time() + state.plan.reply_delay
        if len(content) > SIZE_LIMIT:
            self.replies.send(_reply(552, "5.3.4 Message size exceeds fixed limit"), due=due)
            return True
        return await self._deliver(content, mail_from=mail_from, rcpt_tos=rcpt_tos, state=state, due=due)

    async def _body(self) -> bytes | None:
        """The message up to the final dot, dot-unstuffed; None if the connection ended first."""
        lines: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                return None
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)

    async def _deliver(
        self, content: bytes, *, mail_from: str, rcpt_tos: list[str], state: _FaultState, due: float
    ) -> bool:
        message_id = message_id_of(content)
        fault = state.message_fault()
        if fault == "drop_before_store":
            await self.core.event(fault, connection=self.number, message_id=message_id)
            await self.replies.end("abort", due=self.loop.time())
            return False
        record = {
            "connection": self.number,
            "message_id": message_id,
            "mail_from": mail_from,
            "rcpt_tos": rcpt_tos,
            "size": len(content),
            "fault": fault,
        }
        seq = await self.core.store(record)  # on disk before any answer
        if fault == "drop_after_store":
            await self.core.event(fault, connection=self.number, message_id=message_id)
            await self.replies.end("abort", due=self.loop.time())
            return False
        if fault == "slow_reply" and state.plan.slow_reply is not None:
            seconds = state.plan.slow_reply.seconds
            await self.core.event(fault, connection=self.number, message_id=message_id, detail=f"{seconds} s")
            due = max(due, self.loop.time() + seconds)
        self.replies.send(_reply(250, f"2.0.0 Ok: queued as {self.core.server_id}-{seq}"), due=due)
        return True


# --------------------------------------------------------------------------------------
# In-process server
# --------------------------------------------------------------------------------------


class CountingSMTPServer(_BackgroundServer):
    """The counting server on its own event loop in a daemon thread (``start()``/``stop()``, or ``with``).

    A stopped server can be started again on the same port and directory: the log goes on,
    with a new ``server`` value in its records.  ``faults_file`` (optional) is watched as in
    the subprocess mode; ``set_faults`` replaces the plan directly.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        faults: FaultPlan | None = None,
        faults_file: Path | str | None = None,
        hostname: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(hostname=hostname, port=port, thread_name="counting-smtp")
        self.directory = Path(directory)
        self.faults_file = None if faults_file is None else Path(faults_file)
        self.log = CountingLog(self.directory)
        self._plan = faults or FaultPlan()
        self._core: _Core | None = None

    @property
    def faults(self) -> FaultPlan:
        return self._plan if self._core is None else self._core.plan

    def set_faults(self, plan: FaultPlan) -> None:
        """Replace the plan (its counters start again); commands read after this see it."""
        self._plan = plan
        if self._core is not None:
            self._core.set_plan(plan)

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self._core = _Core(self.directory, plan=self._plan, faults_file=self.faults_file)
        try:
            return super().start()
        except BaseException:
            self._core.close()
            self._core = None
            raise

    def stop(self) -> None:
        core, self._core = self._core, None
        try:
            super().stop()
        finally:
            if core is not None:
                self._plan = core.plan
                core.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Server:
        assert self._core is not None
        return await asyncio.start_server(self._core.handle, sock=sock, limit=LINE_LIMIT, backlog=1024)

    def _abort_connections(self) -> None:
        if self._core is not None:
            self._core.abort_connections()


# --------------------------------------------------------------------------------------
# Subprocess mode
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.counting_smtp",
        description="A counting SMTP server: every accepted message is fsynced to DIR/messages.jsonl "
        "before its 250. Prints its port as the first line of stdout.",
    )
    parser.add_argument("--dir", required=True, type=Path, help="where the log files go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--port-file", type=Path, help="also write the port here (atomically)")
    parser.add_argument(
        "--faults-file", type=Path, help=f"JSON plan re-read before each decision (default DIR/{FAULTS_FILE})"
    )
    parser.add_argument("--faults", help="the starting plan as JSON (FaultPlan fields); flags below amend it")
    parser.add_argument("--drop-before-store-every", type=int, metavar="N")
    parser.add_argument("--drop-before-store-fraction", type=float, metavar="F")
    parser.add_argument("--drop-after-store-every", type=int, metavar="N")
    parser.add_argument("--drop-after-store-fraction", type=float, metavar="F")
    parser.add_argument("--drop-limit", type=int, metavar="N", help="at most N drops of each kind")
    parser.add_argument("--defer-rcpt", action="append", default=[], metavar="ADDRESS")
    parser.add_argument("--defer-rcpt-fraction", type=float, metavar="F")
    parser.add_argument("--defer-rcpt-times", type=int, metavar="K", help="only each one's first K RCPTs")
    parser.add_argument("--slow-reply", type=float, metavar="SECONDS", help="wait before each final 250")
    parser.add_argument("--slow-reply-every", type=int, metavar="N", help="only every Nth message")
    parser.add_argument("--reply-delay", type=float, metavar="SECONDS", help="before every reply")
    parser.add_argument("--seed", type=int)
    return parser


def _drop_pick(every: int | None, fraction: float | None, limit: int | None) -> Pick | None:
    if every is None and fraction is None:
        return None
    return Pick(every=every, fraction=fraction, limit=limit)


def plan_from_args(args: argparse.Namespace) -> FaultPlan:
    plan = FaultPlan.model_validate_json(args.faults) if args.faults else FaultPlan()
    update: dict[str, Any] = {}
    for kind in ("drop_before_store", "drop_after_store"):
        pick = _drop_pick(getattr(args, f"{kind}_every"), getattr(args, f"{kind}_fraction"), args.drop_limit)
        if pick is not None:
            update[kind] = pick
    if args.defer_rcpt or args.defer_rcpt_fraction is not None:
        update["rcpt_defer"] = RcptDefer(
            addresses=tuple(args.defer_rcpt),
            fraction=args.defer_rcpt_fraction or 0.0,
            times=args.defer_rcpt_times,
        )
    if args.slow_reply is not None:
        update["slow_reply"] = SlowReply(seconds=args.slow_reply, every=args.slow_reply_every)
    if args.reply_delay is not None:
        update["reply_delay"] = args.reply_delay
    if args.seed is not None:
        update["seed"] = args.seed
    # Validated again as a whole, so flags get the same checks as the JSON.
    return FaultPlan.model_validate({**plan.model_dump(), **update})


def _write_port_file(path: Path, port: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(f"{port}\n", encoding="ascii")
    os.replace(temporary, path)


async def _serve_forever(args: argparse.Namespace, plan: FaultPlan) -> None:
    directory: Path = args.dir
    core = _Core(directory, plan=plan, faults_file=args.faults_file or directory / FAULTS_FILE)
    try:
        server = await asyncio.start_server(core.handle, args.host, args.port, limit=LINE_LIMIT, backlog=1024)
        port = int(server.sockets[0].getsockname()[1])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if args.port_file is not None:
            _write_port_file(args.port_file, port)
        print(port, flush=True)
        await stop.wait()
        server.close()
        core.abort_connections()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 10.0)
    finally:
        core.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_from_args(args)
    except ValueError as exc:
        sys.exit(f"counting_smtp: bad fault options: {exc}")
    asyncio.run(_serve_forever(args, plan))


class CountingSMTPProcess:
    """``python -m tests.support.counting_smtp`` as a child process (``start()``/``stop()``, or ``with``).

    ``args`` are extra command-line flags (faults at start); ``set_faults`` writes the
    faults file the process re-reads.  The process's stderr goes to ``DIR/server.log``.
    """

    def __init__(
        self, directory: Path | str, *, args: Sequence[str] = (), start_timeout: float = 30.0
    ) -> None:
        self.directory = Path(directory)
        self.faults_file = self.directory / FAULTS_FILE
        self.log = CountingLog(self.directory)
        self.host = "127.0.0.1"
        self.port = 0
        self._args = list(args)
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the counting server is not running")
        return self._process.pid

    def set_faults(self, plan: FaultPlan) -> None:
        write_faults(self.faults_file, plan)

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("the counting server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tests.support.counting_smtp", "--dir", str(self.directory)]
        command += ["--host", self.host, "--port", str(self.port), *self._args]
        with (self.directory / "server.log").open("ab") as errors:
            self._process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
            )
        try:
            self.port = self._read_port(self._process)
        except BaseException:
            self.kill()
            raise
        return self

    def _read_port(self, process: subprocess.Popen[bytes]) -> int:
        assert process.stdout is not None
        deadline = time.monotonic() + self._start_timeout
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or process.poll() is not None:
                    log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the counting server did not start (exit {process.poll()}):\n{log}")
                if selector.select(remaining):
                    chunk = os.read(process.stdout.fileno(), 64)
                    if not chunk:
                        continue  # EOF: poll() tells on the next turn
                    received += chunk
        return int(received.split(b"\n", 1)[0])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout`` (idempotent)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()
