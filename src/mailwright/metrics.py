"""Prometheus metrics: what this process counted, and the runs the database holds.

A low module, like `logs`: the engine, the run ledger and the targets count with the
one-line functions below, and a face exposes them (`serve` on `/metrics`, a worker on
`--metrics-port`) through `Exposition`.

Two kinds of figures:

- Counted by this process (counters and the send-time histogram). They start at zero
  with the process, so Prometheus' `rate()` and `increase()` are what to read, summed
  over the processes.
- Read from the database at scrape time (`RunGauges`, given by a callable): the runs
  queued and running, and the queue depth. The same figures come from every process that
  can see the database, so take `max` over processes, not `sum`. Runs that have finished
  are counted as they finish (`mailwright_runs_finished_total`), not read: counting them
  would read an index that grows with every run ever made, once per scrape.

Multiprocess: with `PROMETHEUS_MULTIPROC_DIR` set (an existing, empty directory, shared by
the processes of one host and emptied before they start, as prometheus-client asks),
each process writes its counters into files there, and a scrape of any of them returns
the sum over all of them (prometheus-client's `MultiProcessCollector`): scrape one.

Labels stay bounded: `target` is the target's display name (the name the run gives it
when the error names none; `none` when the failure is not the target's), never a
recipient or a Message-ID. Nothing secret is in any metric.

prometheus-client is imported on first use, so a command that counts nothing (the CLI's
`--help`, `targets list`) does not load it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailwright.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_DIR_VARIABLE",
    "NO_TARGET",
    "SEND_SECONDS_BUCKETS",
    "Exposition",
    "RunGauges",
    "SendOutcome",
    "lease_taken_over",
    "multiprocess_dir",
    "rate_limit_deferred",
    "run_finished",
    "send_seconds",
    "send_step",
    "sent",
    "target_label",
    "trigger_checked",
    "trigger_failed",
]

log = logging.getLogger(__name__)

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The Prometheus text format, version 0.0.4: what prometheus-client's generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# An SMTP send takes from a few milliseconds (a pooled connection on the LAN) to a minute (a
# slow server's reply after DATA, the command timeout's order).
SEND_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
NO_TARGET = "none"  # the label of a failure that is not a target's (a bad message, no such target)
_LABEL_MAX = 200  # a target's display name is at most this long; a label never longer


class SendOutcome(StrEnum):
    """What became of a send step (a Send Email step, or one message of a batch)."""

    SENT = "sent"
    PARTIAL = "partial"  # accepted for some recipients, refused for others
    FAILED = "failed"  # for good: no retry is left, or the failure is permanent
    UNKNOWN = "unknown"  # may or may not have been delivered; never sent again on its own
    DEFERRED = "deferred"  # waits: a retry later, a rate limit, or the target asked to wait


@dataclass(frozen=True, slots=True)
class RunGauges:
    """What the database holds now: runs by status (the unfinished ones), and the queue depth,
    each by worker pool ("" for the default pool: runs of targets that name none).

    `due`: runs due and not claimed (queued and due, or running with an expired lease),
    what a worker of that pool would take now.
    """

    by_status: Mapping[tuple[str, str], int]  # (status, pool) -> runs
    due: Mapping[str, int]  # pool -> runs


# --- counting: one line at each point -------------------------------------------------------


def send_step(outcome: SendOutcome, *, target: str | None) -> None:
    _metrics().send_steps.labels(target=_bounded(target), outcome=outcome.value).inc()


def sent(output: Mapping[str, Any]) -> None:
    """A send that succeeded, from its result (`status`: sent or partial; `target`: display name)."""
    outcome = SendOutcome.PARTIAL if output.get("status") == "partial" else SendOutcome.SENT
    send_step(outcome, target=output.get("target"))


def send_seconds(seconds: float, *, target: str) -> None:
    """How long a send took, from the target's first command to its reply after the message."""
    _metrics().send_seconds.labels(target=_bounded(target)).observe(seconds)


def rate_limit_deferred(*, target: str | None) -> None:
    """A message held back by a rate limit (the target's, or one the target asked for): not a failure."""
    _metrics().rate_limit_deferrals.labels(target=_bounded(target)).inc()


def lease_taken_over() -> None:
    """A run claimed whose earlier lease had expired: its worker died, froze or lost the database."""
    _metrics().lease_takeovers.inc()


def run_finished(status: str) -> None:
    _metrics().runs_finished.labels(status=status).inc()


def trigger_checked(*, workflow: str, trigger: int) -> None:
    """One look at an email trigger's mailbox (a poll, a wake from IDLE, a pass of POP3)."""
    _metrics().trigger_checks.labels(workflow=_bounded(workflow), trigger=str(trigger)).inc()


def trigger_failed(*, workflow: str, trigger: int) -> None:
    """An email trigger's watcher failed (the mailbox unreachable, a login refused…) and will retry."""
    _metrics().trigger_errors.labels(workflow=_bounded(workflow), trigger=str(trigger)).inc()


def target_label(exc: BaseException | None, fallback: str | None) -> str:
    """The target a failure belongs to: the one the error names (by display name), else `fallback`."""
    named = getattr(exc, "target", None)
    return _bounded(named if isinstance(named, str) and named else fallback)


def _bounded(value: str | None) -> str:
    return value[:_LABEL_MAX] if value else NO_TARGET


# --- the metrics themselves, made on first use -----------------------------------------------


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        # No `_created` series beside each counter: twice the lines for a start time nobody graphs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        # Our own registry, not prometheus-client's global one: a second Services in a test
        # process, or a library of the host, cannot collide with our names.
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.send_steps: Counter = Counter(
            "mailwright_send_steps",
            "Send steps (a Send Email step, or one message of a batch) by target and outcome: "
            "sent, partial, failed, unknown, deferred",
            ["target", "outcome"],
            registry=registry,
        )
        self.send_seconds: Histogram = Histogram(
            "mailwright_send_seconds",
            "Time to send one message through a target, for the sends it accepted",
            ["target"],
            buckets=SEND_SECONDS_BUCKETS,
            registry=registry,
        )
        self.rate_limit_deferrals: Counter = Counter(
            "mailwright_rate_limit_deferrals",
            "Messages held back by a rate limit (the target's own, or a wait the target asked for)",
            ["target"],
            registry=registry,
        )
        self.lease_takeovers: Counter = Counter(
            "mailwright_lease_takeovers",
            "Runs claimed after the earlier holder's lease had expired (a worker died or stalled)",
            registry=registry,
        )
        self.runs_finished: Counter = Counter(
            "mailwright_runs_finished", "Runs that ended, by final status", ["status"], registry=registry
        )
        self.trigger_checks: Counter = Counter(
            "mailwright_trigger_checks",
            "Looks at the mailbox of an email trigger (workflow name, trigger position)",
            ["workflow", "trigger"],
            registry=registry,
        )
        self.trigger_errors: Counter = Counter(
            "mailwright_trigger_errors",
            "Failures of an email trigger's watcher, each followed by a retry",
            ["workflow", "trigger"],
            registry=registry,
        )


_made: _Metrics | None = None
_making = threading.Lock()


def _metrics() -> _Metrics:
    global _made
    if _made is None:
        with _making:  # counted from the event loop and from threads alike
            if _made is None:
                _made = _Metrics()
    return _made


# --- exposing them ----------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """The directory of multiprocess mode, checked (None: this process exposes its own figures)."""
    value = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(
            f"{MULTIPROC_DIR_VARIABLE}={value} is not a directory",
            hint="create it (empty) before starting the processes that share it, or unset it",
        )
    return path


class _DatabaseCollector:
    """The runs by status and the queue depth, read from the database at each scrape."""

    def __init__(self, read: Callable[[], RunGauges]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(
            "mailwright_database_up", "1 if the last scrape read the runs from the database, else 0"
        )
        try:
            gauges = self._read()
        except Exception as exc:  # a database restart must not turn the whole scrape into a 500
            log.warning("metrics: could not read the runs from the database (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        runs = GaugeMetricFamily(
            "mailwright_runs",
            "Runs not finished, by status and worker pool (from the database)",
            labels=["status", "pool"],
        )
        for (status, pool), count in sorted(gauges.by_status.items()):
            runs.add_metric([status, pool], count)
        yield runs
        depth = GaugeMetricFamily(
            "mailwright_queue_depth",
            "Runs due and not claimed, by worker pool: what a worker would take now (from the database)",
            labels=["pool"],
        )
        for pool, count in sorted(gauges.due.items()):
            depth.add_metric([pool], count)
        yield depth

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time only: nothing is read when the collector is registered


class _OwnMetrics:
    """This process's counters, as a collector of the exposition's registry."""

    def collect(self) -> Iterable[Metric]:
        return _metrics().registry.collect()

    def describe(self) -> Iterable[Metric]:
        return []


class Exposition:
    """What one `/metrics` answers: this process's figures (or all of the host's, in
    multiprocess mode) and, when `read_runs` is given, the runs in the database."""

    def __init__(self, read_runs: Callable[[], RunGauges] | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        shared = multiprocess_dir()
        if shared is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry, path=str(shared))  # type: ignore[no-untyped-call]
            _metrics()  # this process's files too, so its zeros show before it counts
        else:
            from prometheus_client import PlatformCollector, ProcessCollector

            self.registry.register(_OwnMetrics())
            ProcessCollector(registry=self.registry)  # CPU, memory, open files of this process
            PlatformCollector(registry=self.registry)
        if read_runs is not None:
            self.registry.register(_DatabaseCollector(read_runs))

    def render(self) -> bytes:
        """The text format. Reads the database (when asked to): call it off the event loop."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
