"""Schemathesis against /api/openapi.json: no 5xx, and every answer as the document says.

The API is served on loopback with a fresh MAILWRIGHT_HOME, a token, a target that
points at an in-process SMTP server on 127.0.0.1, and a workflow. Every operation
gets `EXAMPLES` valid and `EXAMPLES` invalid requests, generated from a fixed seed
(derandomized), and each answer is checked: not a server error, a documented
status code and content type, a body that matches its schema, and (for invalid
requests) a 4xx.

Nothing may leave the machine. Operations that connect to a target's server have
their target pinned to the loopback one: `send-email` and `send-email/batch` (their
body's `target`, with no `account_key` override) and `targets/{ref}/test`. Every
other `ref` the fuzzer makes up names nothing (404). As a guarantee beyond those
constraints, while the fuzzer runs a guard refuses every DNS lookup and connection
to a non-loopback address in this process (the server runs in it), and the test
fails if anything tried one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mailwright.config import Settings
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.support.apiserver import APIServer
from tests.support.smtpserver import SMTPTestServer

EXAMPLES = 25  # per operation and generation mode
SEED_WORKFLOW = """
name: Fuzz workflow
target: Loopback relay
inputs:
  to: {type: string, default: fuzz@example.test}
steps:
  - id: hello
    activity: send_email
    with: {from: robot@example.test, to: ["{{ inputs.to }}"], subject: Hi, body: Hello}
"""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# Unknown query parameters are ignored (as most HTTP APIs do), not refused: do not send them as
# "invalid" requests expecting a 4xx.
CONFIG = schemathesis.Config.from_dict({"generation": {"allow-extra-parameters": False}})

pytestmark = pytest.mark.timeout(600)


# --- loopback only ---------------------------------------------------------------------


def _is_loopback(host: object) -> bool:
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass
class LoopbackGuard:
    """Refuses DNS lookups and connections to anything but loopback; remembers every attempt."""

    refused: list[str] = field(default_factory=list)

    def wrap_getaddrinfo(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _is_loopback(host.decode() if isinstance(host, bytes) else host):
                self.refused.append(f"getaddrinfo({host!r})")
                raise socket.gaierror(socket.EAI_NONAME, "refused by the test: loopback only")
            return original(host, *args, **kwargs)

        return getaddrinfo

    def wrap_connect(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def connect(sock: socket.socket, address: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
                self.refused.append(f"connect({address!r})")
                raise ConnectionRefusedError("refused by the test: loopback only")
            return original(sock, address)

        return connect


@pytest.fixture(scope="module")
def loopback_only() -> Iterator[LoopbackGuard]:
    guard = LoopbackGuard()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", guard.wrap_getaddrinfo(socket.getaddrinfo))
        patch.setattr(socket.socket, "connect", guard.wrap_connect(socket.socket.connect))
        patch.setattr(socket.socket, "connect_ex", guard.wrap_connect(socket.socket.connect_ex))
        yield guard


# --- the API under test ----------------------------------------------------------------


@dataclass
class FuzzedAPI:
    base_url: str
    token: str
    target_id: str
    smtp: SMTPTestServer
    services: Services


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory, loopback_only: LoopbackGuard) -> Iterator[FuzzedAPI]:
    home: Path = tmp_path_factory.mktemp("fuzz") / "home"
    services = Services(Settings(home=home))
    smtp = SMTPTestServer(smtputf8=True).start()
    target = services.targets.create(
        TargetCreate(
            display_name="Loopback relay",
            server="127.0.0.1",
            port=smtp.port,
            security="none",
            no_account_keys=True,
            connect_timeout=5,
            command_timeout=5,
        )
    )
    services.workflows.create(SEED_WORKFLOW)
    token = services.tokens.create("fuzz").token
    try:
        with APIServer(services) as server:
            yield FuzzedAPI(
                base_url=server.base_url, token=token, target_id=target.id, smtp=smtp, services=services
            )
    finally:
        smtp.stop()
        services.close()


# --- the fuzzing -------------------------------------------------------------------------


def _pin_to_loopback(case: Case[Any], api: FuzzedAPI) -> Case[Any]:
    """Valid requests of operations that connect to a target's server only ever reach the loopback one.

    (Invalid ones are left as generated: pinning might make them valid; their made-up
    target names nothing, so they are refused before any connection.)
    """
    path = case.operation.path
    if path == "/api/v1/targets/{ref}/test":
        case.path_parameters = {**(case.path_parameters or {}), "ref": api.target_id}
    elif path in ("/api/v1/send-email", "/api/v1/send-email/batch") and isinstance(case.body, dict):
        body: dict[str, Any] = {k: v for k, v in case.body.items() if k != "account_key"}
        body["target"] = api.target_id
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, dict):
                message.pop("target", None)
                message.pop("account_key", None)
        case.body = body
    return case


@dataclass
class Tally:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _fuzz(
    operation: Any, mode: GenerationMode, api: FuzzedAPI, session: requests.Session, tally: Tally
) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])
    strategy = operation.as_strategy(generation_mode=mode)
    if mode == GenerationMode.POSITIVE:
        # The document's examples too (a real message for send-email), among the generated cases.
        strategy = st.one_of(*operation.get_strategies_from_examples(), strategy)
        strategy = strategy.map(lambda case: _pin_to_loopback(case, api))

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,  # a fixed seed: the same requests on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failure as found is reported
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        response = case.call(
            base_url=api.base_url, session=session, headers={"Authorization": f"Bearer {api.token}"}
        )
        tally.requests += 1
        tally.by_status[response.status_code] = tally.by_status.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # one failure per operation and mode; the others run
        tally.failures.append(f"{operation.label} ({mode.value}): {exc!s:.3000}")


def test_every_operation_answers_as_documented(
    fuzzed_api: FuzzedAPI, loopback_only: LoopbackGuard, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.base_url}/api/openapi.json", config=CONFIG)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid OpenAPI
        operations.append(result.ok())
    assert len(operations) >= 30
    tally = Tally()
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, fuzzed_api, session, tally)
    with capsys.disabled():
        print(
            f"\nschemathesis: {len(operations)} operations, {tally.requests} requests, "
            f"statuses {dict(sorted(tally.by_status.items()))}, "
            f"{len(fuzzed_api.smtp.messages)} messages reached the loopback SMTP server"
        )
    assert not tally.failures, "\n\n".join(tally.failures)
    assert loopback_only.refused == [], "something tried to leave loopback"
    assert tally.requests >= len(operations) * 10
