"""The engine's retry policy, shared by single runs (engine/executor.py) and batches (engine/batch.py)."""

from __future__ import annotations

import random

from mailwright.errors import RateLimitedError

BACKOFF_BASE = 1.0  # seconds; doubled per attempt, with jitter
BACKOFF_CAP = 300.0
# Retries sooner than this wait inside the claim; later ones release the run.
INLINE_WAIT = 5.0


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter for the `attempt`-th retry (1-based)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)


def is_transient(exc: BaseException) -> bool:
    return bool(getattr(exc, "transient", False)) or isinstance(exc, TimeoutError)


def retry_wait(exc: BaseException, attempts: int, most: int) -> float | None:
    """Seconds before a failed attempt is tried again, or None when the step fails for good."""
    if is_transient(exc) and attempts < most:
        # A server that said when to come back (Retry-After: Graph's 429 and 503) is not asked sooner.
        asked = asked_wait(exc)
        wait = backoff(attempts)
        return wait if asked is None else max(wait, asked)
    return None


def asked_wait(exc: BaseException) -> float | None:
    """The seconds a transient refusal asked us to wait (its Retry-After), or None."""
    asked = getattr(exc, "retry_after", None)
    if is_transient(exc) and isinstance(asked, int | float) and asked > 0:
        return float(asked)
    return None


def batch_retry_wait(exc: BaseException, attempts: int, most: int) -> float | None:
    """`retry_wait` for a batch message: retried in place, so capped short; a rate limit is no failure."""
    if isinstance(exc, RateLimitedError):
        return None
    wait = retry_wait(exc, attempts, most)
    return None if wait is None else min(INLINE_WAIT, wait)
