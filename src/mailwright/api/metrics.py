"""`GET /metrics` of `mailwright serve`: Prometheus' text format, for any valid API token.

Why a token, when exporters are often open: `serve` is the process that listens beyond
loopback (behind its HTTPS proxy), and its figures name the targets and say how much
mail goes where. An API token of any role is enough (reading is what a viewer may do),
and Prometheus sends one as a bearer token (`authorization: {credentials_file: ...}` in
the scrape config). Workers are different: they serve their metrics on a port of their
own, on loopback unless told otherwise (`mailwright worker --metrics-host`).

A plain route, outside the API (`/api/`) and the web pages: not in the OpenAPI document,
no session or cookie; its refusals are the API's error bodies. Scrapes are not written
to the audit log: reading is not audited.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mailwright import metrics
from mailwright.api import errors as api_errors
from mailwright.errors import AuthorizationError
from mailwright.services.app import Services

PATH = "/metrics"


def install(app: FastAPI, services: Services) -> None:
    exposition = metrics.Exposition(read_runs=services.runs.gauges)

    async def scrape(request: Request) -> Response:
        try:
            await run_in_threadpool(services.tokens.verify, _bearer(request))
        except AuthorizationError as exc:
            return await api_errors.mailwright_error(request, exc)
        # Reads the database (the runs by status, the queue depth): off the event loop.
        body = await run_in_threadpool(exposition.render)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    app.add_route(PATH, scrape, methods=["GET"], include_in_schema=False)


def _bearer(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise AuthorizationError(
            f"{PATH} needs an API token: send 'Authorization: Bearer TOKEN'",
            hint="any role will do: `mailwright tokens create prometheus --role viewer`, and give it "
            "to Prometheus as `authorization: {credentials_file: FILE}` in the scrape config",
        )
    return credentials.strip()
