"""A worker process for the shared-limits tests: queues one batch and executes it to the end.

    python -m tests.support.limits_worker --home DIR --database-url URL --redis-url URL \
        --prefix mwtest:abc: --target NAME --count N --tag w1 [--start-at UNIX_TIME]

It builds `Services` from `Settings` with MAILWRIGHT_REDIS_URL's value (so the services
choose the shared limiter and connection cap themselves), queues a batch of `count`
messages to `target` (Message-IDs and subjects carry `tag`), waits until `start-at` so
that every worker starts together, and executes the batch with the ordinary executor
until it is finished (a deferred run is taken again when due). Prints one JSON line:
the run's status and step counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailwright.config import Settings
from mailwright.services.app import Services
from mailwright.transport import redis_limits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.support.limits_worker")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--prefix", required=True, help="the Redis key prefix (one per test)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--start-at", type=float, default=0.0, help="Unix time to start sending at")
    return parser


async def run(args: argparse.Namespace) -> dict[str, object]:
    redis_limits.PREFIX = args.prefix  # read when the services connect
    services = Services(
        Settings(
            home=args.home,
            database_url=args.database_url,
            redis_url=args.redis_url,
            secret_key=args.secret_key,
            sandbox=False,
        )
    )
    try:
        messages = (
            (
                f"line {i}",
                {
                    "from": "limits@example.org",
                    "to": [f"{args.tag}-{i}@example.net"],
                    "subject": f"{args.tag} #{i}",
                    "body": "hi",
                },
            )
            for i in range(args.count)
        )
        created = services.batches.create(messages, target=args.target)
        executor = services.executor(worker_id=args.tag, lease=timedelta(seconds=10), with_files=False)
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        passes = 0
        while True:
            passes += 1
            status = await executor.execute(created.run_id)
            run = services.runs.get(created.run_id)
            if run.status not in ("queued", "running"):
                break
            # Deferred (a rate-limit slot far away, or Redis away too long): taken again when due.
            due = run.not_before or datetime.now(UTC)
            await asyncio.sleep(max(0.05, (due - datetime.now(UTC)).total_seconds()))
        return {
            "tag": args.tag,
            "status": str(status),
            "run_status": str(run.status),
            "steps": run.step_counts,
            "passes": passes,
        }
    finally:
        await services.pools.aclose()
        services.close()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    print(json.dumps(asyncio.run(run(build_parser().parse_args()))), flush=True)


if __name__ == "__main__":
    main()
