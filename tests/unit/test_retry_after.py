"""A server's Retry-After is honoured: the engine never retries sooner than it was asked to."""

from __future__ import annotations

from mailwright.engine.retry import backoff, retry_wait
from mailwright.errors import TargetDeferredError, TargetError


def test_a_deferral_with_retry_after_waits_at_least_that_long() -> None:
    exc = TargetDeferredError("throttled", code=429, reply="Too Many Requests", retry_after=90)
    waits = [retry_wait(exc, 1, 5) for _ in range(50)]
    assert all(w is not None and w >= 90 for w in waits)


def test_without_retry_after_the_backoff_decides() -> None:
    exc = TargetDeferredError("busy", code=451, reply="try later")
    waits = [retry_wait(exc, 3, 5) for _ in range(50)]
    assert all(w is not None and 2.0 <= w <= 4.0 for w in waits)
    assert 0.5 <= backoff(1) <= 1.0


def test_a_permanent_failure_is_not_retried_whatever_it_asks() -> None:
    exc = TargetError("refused")
    assert retry_wait(exc, 1, 5) is None
