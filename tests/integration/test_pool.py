"""The SMTP connection pool: reuse, limits, idle handling, recovery, and its use by Send Email."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest

from mailwright import errors
from mailwright.domain.smtp import Security
from mailwright.secrets import Secret
from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest
from mailwright.transport.pool import PoolLimits, PoolRegistry, SMTPPool
from mailwright.transport.smtp import Delivery, Login, SMTPEndpoint
from tests.integration.conftest import PASSWORD, Targets
from tests.support.pipeserver import PipeServer
from tests.support.smtpserver import SMTPServerFactory

BODY = b"Subject: pooled\r\n\r\nHello from the pool.\r\n"


def endpoint(host: str, port: int, *, timeout: float = 5.0) -> SMTPEndpoint:
    return SMTPEndpoint(
        target_name="pooled",
        host=host,
        port=port,
        security=Security.NONE,
        ssl_context=ssl.create_default_context(),
        starttls_required=False,
        command_timeout=timeout,
    )


@pytest.fixture
async def server() -> AsyncIterator[PipeServer]:
    started = await PipeServer().start()
    yield started
    await started.close()


def make_pool(server: PipeServer, **limits: float) -> SMTPPool:
    return SMTPPool(
        endpoint=endpoint(server.host, server.port),
        login=None,
        limits=PoolLimits(**limits),  # type: ignore[arg-type]
    )


async def send(pool: SMTPPool, number: int = 0, **options: object) -> Delivery:
    return await pool.deliver(
        sender="ops@example.org",
        recipients=[(f"user{number}@example.net", False)],
        data=BODY.replace(b"Hello", f"Message {number}".encode()),
        smtputf8=False,
        continue_if_one_address_valid=False,
        **options,  # type: ignore[arg-type]
    )


def numbers(server: PipeServer) -> list[int]:
    return sorted(int(m.rcpt_tos[0].removeprefix("user").split("@")[0]) for m in server.messages)


async def test_one_connection_serves_many_sends(server: PipeServer) -> None:
    pool = make_pool(server)
    for number in range(20):
        await send(pool, number)
    assert server.connections == 1
    assert numbers(server) == list(range(20))
    await pool.aclose()
    assert server.live == set()


async def test_concurrent_senders_share_few_connections_and_pipeline_across_messages(
    server: PipeServer,
) -> None:
    pool = make_pool(server, max_connections=4)
    await asyncio.gather(*(send(pool, n) for n in range(200)))
    assert numbers(server) == list(range(200))
    assert server.connections <= 4
    chained = [chunk for reads in server.reads.values() for chunk in reads if b"\r\n.\r\nMAIL FROM:" in chunk]
    assert chained, "the next message's MAIL should share a write with the previous body"
    await pool.aclose()


async def test_max_messages_per_connection(server: PipeServer) -> None:
    pool = make_pool(server, max_messages_per_connection=3)
    for number in range(10):
        await send(pool, number)
    assert server.connections == 4
    per_connection = [sum(1 for m in server.messages if m.connection == c) for c in range(1, 5)]
    assert per_connection == [3, 3, 3, 1]
    await pool.aclose()


async def test_idle_connections_close(server: PipeServer) -> None:
    pool = make_pool(server, idle_timeout=0.2)
    await send(pool)
    assert len(server.live) == 1
    await asyncio.sleep(0.6)
    assert server.live == set()
    assert any(line == "QUIT" for _, line in server.commands)
    await send(pool, 1)  # a new connection on demand
    assert server.connections == 2
    await pool.aclose()


async def test_noop_before_reuse_after_idling(server: PipeServer) -> None:
    pool = make_pool(server, check_after=0.1)
    await send(pool)
    await send(pool, 1)
    assert server.noops == 0  # busy connections are not checked
    await asyncio.sleep(0.3)
    await send(pool, 2)
    assert server.noops == 1 and server.connections == 1
    server.drop_all()  # the server restarts while the connection idles
    await asyncio.sleep(0.3)
    await send(pool, 3)
    assert server.connections == 2
    assert numbers(server) == [0, 1, 2, 3]
    await pool.aclose()


@pytest.mark.parametrize("fault", ["drop_at_mail", "reply_421_at_mail"])
async def test_connection_lost_before_the_body_is_retried_once_on_a_fresh_connection(fault: str) -> None:
    server = await PipeServer(**{fault: {3}}).start()  # type: ignore[arg-type]
    try:
        pool = make_pool(server)
        for number in range(5):
            await send(pool, number)
        assert numbers(server) == [0, 1, 2, 3, 4]  # each exactly once
        assert server.connections == 2
        await pool.aclose()
    finally:
        await server.close()


async def test_a_second_loss_fails_with_the_reason() -> None:
    server = await PipeServer(drop_at_mail={1, 2}).start()
    try:
        pool = make_pool(server)
        with pytest.raises(errors.TargetConnectError, match="closed the connection during mail") as info:
            await send(pool)
        assert info.value.transient
        assert server.messages == [] and server.connections == 2
        await pool.aclose()
    finally:
        await server.close()


async def test_loss_after_the_body_is_not_resent() -> None:
    server = await PipeServer(drop_after_dot={1}).start()
    try:
        pool = make_pool(server)
        with pytest.raises(errors.TargetConnectError, match="may or may not have been accepted") as info:
            await send(pool)
        assert info.value.stage == "data"
        assert server.dots == 1 and len(server.unanswered) == 1 and server.messages == []
        await send(pool, 1)  # the pool recovers with a new connection
        assert numbers(server) == [1]
        await pool.aclose()
    finally:
        await server.close()


async def test_loss_in_a_busy_stream_loses_nothing_and_doubles_nothing() -> None:
    server = await PipeServer(drop_after_dot={25}, drop_at_mail={60}).start()
    try:
        pool = make_pool(server, max_connections=2)
        results = await asyncio.gather(*(send(pool, n) for n in range(100)), return_exceptions=True)
        failed = [n for n, r in enumerate(results) if isinstance(r, BaseException)]
        assert len(failed) == 1  # the message whose final reply was lost
        assert isinstance(results[failed[0]], errors.TargetConnectError)
        delivered = numbers(server)
        assert len(delivered) == len(set(delivered)) == 99
        assert sorted([*delivered, *failed]) == list(range(100))
        await pool.aclose()
    finally:
        await server.close()


async def test_wrong_password_is_tried_once_for_many_senders(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory(tls="ssl", users={"alice@example.org": PASSWORD})
    assert server.tls_files is not None
    ep = SMTPEndpoint(
        target_name="pooled",
        host=server.host,
        port=server.port,
        security=Security.SSL,
        ssl_context=server.tls_files.client_context(),
    )
    login = Login(key_name="alice", username="alice@example.org", password=Secret("wrong"))
    pool = SMTPPool(endpoint=ep, login=login, limits=PoolLimits())
    results = await asyncio.gather(*(send(pool, n) for n in range(10)), return_exceptions=True)
    assert all(isinstance(r, errors.TargetAuthError) for r in results)
    assert server.auth_attempts == [("alice@example.org", False)]
    await pool.aclose()


async def test_lockstep_server_reuses_its_connection(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory()  # aiosmtpd: no PIPELINING
    pool = SMTPPool(endpoint=endpoint(server.host, server.port), login=None, limits=PoolLimits())
    assert not (await pool.capabilities()).pipelining
    await asyncio.gather(*(send(pool, n) for n in range(30)))
    assert len(server.wait_for(30)) == 30
    assert server.connections <= 8
    await pool.aclose()


async def test_before_data_hook_precedes_data() -> None:
    server = await PipeServer().start()
    try:
        pool = make_pool(server)
        marks: list[int] = []

        async def mark() -> None:
            marks.append(server.dots)

        await send(pool, 0, before_data=mark)
        await send(pool, 1, before_data=mark)
        assert marks == [0, 1]
        await pool.aclose()
    finally:
        await server.close()


async def test_closed_pool_refuses_and_registry_follows_edits(server: PipeServer) -> None:
    registry = PoolRegistry()
    limits = PoolLimits()

    def pool_for(identity: object) -> SMTPPool:
        return registry.pool(
            target_id="t1",
            identity=identity,
            endpoint=lambda: endpoint(server.host, server.port),
            login=None,
            limits=limits,
        )

    first = pool_for("settings-1")
    assert pool_for("settings-1") is first
    await send(first)
    edited = pool_for("settings-2")
    assert edited is not first
    await asyncio.sleep(0.05)
    assert first.closed
    with pytest.raises(errors.TargetConnectError, match="pool"):
        await send(first)
    await send(edited, 1)
    assert registry.pools() == [edited]
    await registry.aclose()
    assert edited.closed


# --- through Send Email ---------------------------------------------------------------------


async def test_send_email_reuses_pooled_connections(mw: Services, targets: Targets) -> None:
    server = await PipeServer().start()
    try:
        target = targets.target(server, security="none")
        request = SendEmailRequest.model_validate(
            {
                "target": target.display_name,
                "from": "ops@example.org",
                "to": ["bob@example.net"],
                "body": "hi",
            }
        )
        results = await asyncio.gather(*(mw.sending.send(request) for _ in range(40)))
        assert all(r.status == "sent" for r in results)
        assert len({r.message_id for r in results}) == 40
        assert len(server.messages) == 40
        assert server.connections <= 8
        assert results[0].timings["total"] >= results[0].timings["data"] >= 0
    finally:
        await server.close()


async def test_a_message_arriving_mid_reply_is_written_at_once() -> None:
    delay = 0.2
    server = await PipeServer(reply_delay=delay).start()
    try:
        pool = make_pool(server, max_connections=1)
        await send(pool)  # the connection is open and idle
        first = asyncio.create_task(send(pool, 1))
        while server.dots < 2:  # the first body arrived; its reply is on its way
            await asyncio.sleep(0.005)
        started = asyncio.get_running_loop().time()
        await send(pool, 2)
        # Written at once, its envelope and body take two round trips, not three.
        assert asyncio.get_running_loop().time() - started < 2.5 * delay
        await first
        assert numbers(server) == [0, 1, 2] and server.connections == 1
        await pool.aclose()
    finally:
        await server.close()


def test_pools_do_not_cross_event_loops(smtp_server_factory: SMTPServerFactory) -> None:
    """Like two CLI commands in one process: each asyncio.run gets its own pool, closed with its loop."""
    server = smtp_server_factory()
    registry = PoolRegistry()

    async def one_send(number: int) -> SMTPPool:
        pool = registry.pool(
            target_id="t1",
            identity="same",
            endpoint=lambda: endpoint(server.host, server.port),
            login=None,
            limits=PoolLimits(),
        )
        await send(pool, number)
        return pool  # left open: the end of asyncio.run cancels its worker, which says QUIT

    first = asyncio.run(one_send(0))
    second = asyncio.run(one_send(1))
    assert first is not second
    assert len(server.wait_for(2)) == 2 and server.connections == 2


def test_sends_on_uvloop_as_serve_does_when_it_is_installed(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    """uvicorn runs `serve` on uvloop when it is installed, and uvloop's transports do not derive
    from asyncio.Transport: the pool took that for a closed connection and sent nothing."""
    import uvloop

    server = smtp_server_factory(tls="starttls", users={"alice@example.org": PASSWORD})
    target = targets.target(server, security="starttls", key=targets.key())
    request = SendEmailRequest.model_validate(
        {"target": target.display_name, "to": ["bob@example.net"], "subject": "on uvloop", "body": "hi"}
    )

    async def send_many() -> list[str]:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        try:
            results = await asyncio.gather(*(mw.sending.send(request) for _ in range(12)))
        finally:
            await mw.pools.aclose()
        return [r.status for r in results]

    assert uvloop.run(send_many()) == ["sent"] * 12
    received = server.wait_for(12)
    assert all(m.tls and m.auth_login == "alice@example.org" for m in received)
    assert server.connections <= 8  # pooled and reused, not one per message


async def test_a_refused_recipient_with_pipelined_data_leaves_no_unknown_outcome(
    mw: Services, targets: Targets
) -> None:
    """DATA went out with the RCPT (PIPELINING), the RCPT was refused: the step knows nothing was sent."""
    server = await PipeServer(refuse={"nobody@example.net": (550, "5.1.1 no such user")}).start()
    try:
        target = targets.target(server, security="none")
        run = mw.runs.start_send_email(
            SendEmailRequest.model_validate(
                {"target": target.display_name, "from": "ops@example.org", "to": ["nobody@example.net"]}
            )
        )
        assert await mw.executor(worker_id="t", with_files=False).execute(run.id) == "failed"
        (step,) = mw.runs.get(run.id).steps
        assert step.send_state is None and step.attempts == 1
        assert step.error is not None and "550 5.1.1 no such user" in step.error["message"]
        assert server.messages == []
    finally:
        await server.close()
