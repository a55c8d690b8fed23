"""Crash test with real processes: SIGKILL a worker mid-batch, start another, count what arrived."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from email import policy
from pathlib import Path

from mailwright.config import Settings
from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from tests.support.smtpserver import Faults, SMTPServerFactory, SMTPTestServer

BATCH = 200
MAILWRIGHT = str(Path(sys.executable).parent / "mailwright")


def _worker(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env.update(MAILWRIGHT_HOME=str(home), MAILWRIGHT_LEASE_SECONDS="3")
    with log.open("ab") as out:
        return subprocess.Popen(
            [MAILWRIGHT, "worker"], env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )


def test_sigkill_mid_batch_loses_nothing(tmp_path: Path, smtp_server_factory: SMTPServerFactory) -> None:
    # A slow server (0.5 s before each final reply) so the kill lands mid-batch.
    server = smtp_server_factory(faults=Faults(delay={"data": 0.5}))
    home = tmp_path / "home"
    services = Services(Settings(home=home))
    services.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "Slow",
                "server": "127.0.0.1",
                "port": server.port,
                "security": "none",
                "no_account_keys": True,
            }
        )
    )
    runs = [
        services.runs.start_send_email(
            SendEmailRequest.model_validate(
                {
                    "target": "Slow",
                    "from": "batch@example.org",
                    "to": [f"r{i}@example.net"],
                    "subject": f"#{i}",
                }
            )
        ).id
        for i in range(BATCH)
    ]
    log = tmp_path / "worker.log"
    first = _worker(home, log)
    deadline = time.monotonic() + 60
    while len(server.messages) < BATCH // 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = len(server.messages)
    assert 0 < killed_at < BATCH, f"the kill should land mid-batch, not after {killed_at}"

    second = _worker(home, log)
    try:
        statuses = _wait_finished(services, runs)
    finally:
        second.terminate()
        second.wait(timeout=60)

    # Nothing lost, nothing doubled: each run's message arrived, or its step says "unknown".
    steps = [services.runs.get(r).steps[0] for r in runs]
    unknown = {s.message_id for s in steps if s.status == "unknown"}
    assert statuses == Counter({"succeeded": BATCH - len(unknown), "failed": len(unknown)}), (
        statuses,
        log.read_text()[-2000:],
    )
    assert all(s.send_state == "unknown" for s in steps if s.message_id in unknown)
    # Messages whose reply never reached the killed worker count too: a real MTA would deliver them.
    ids = _arrived(server)
    assert {s.message_id for s in steps if s.status == "succeeded"} <= set(ids)
    assert max(ids.values()) == 1  # the unknown are not resent on their own
    assert len(unknown) <= 16  # at most MAILWRIGHT_WORKER_CONCURRENCY sends were in flight
    # Sent again only when asked; then all arrived, and only an unknown one may be twice.
    for run_id in runs:
        if services.runs.get(run_id).status == "failed":
            services.runs.retry(run_id, include_unknown=True)
    third = _worker(home, log)
    try:
        assert _wait_finished(services, runs) == Counter({"succeeded": BATCH})
    finally:
        third.terminate()
        third.wait(timeout=60)
    ids = _arrived(server)
    doubled = {mid for mid, n in ids.items() if n > 1}
    print(
        f"\ncrash test: {BATCH} messages, killed after {killed_at}, {len(unknown)} unknown, "
        f"{len(ids)} distinct delivered after the retry, {len(doubled)} twice"
    )
    assert len(ids) == BATCH and doubled <= unknown
    services.close()


def _wait_finished(services: Services, runs: list[str]) -> Counter[str]:
    deadline = time.monotonic() + 240
    while True:
        statuses = Counter(services.runs.get(r).status for r in runs)
        if statuses["succeeded"] + statuses["failed"] == len(runs) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.5)


def _arrived(server: SMTPTestServer) -> Counter[str]:
    received = [*server.messages, *server.dropped]
    return Counter(
        str(email.message_from_bytes(m.content, policy=policy.default)["Message-ID"]) for m in received
    )
