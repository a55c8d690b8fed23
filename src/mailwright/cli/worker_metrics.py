"""The metrics of `mailwright worker`: Prometheus' text format on a port of its own.

A worker has no HTTP server otherwise, so prometheus-client's small threaded one serves
`/metrics` (any path answers the same). It needs no token: it listens on 127.0.0.1
unless `--metrics-host` says otherwise, and a Prometheus on the same machine (or an SSH
tunnel, or a firewall that lets only Prometheus in) is the way to reach it.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from mailwright import metrics
from mailwright.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from mailwright.services.app import Services

PORT_OPTION = "--metrics-port (or MAILWRIGHT_METRICS_PORT)"


def serve_if_asked(services: Services, *, port: int | None, host: str) -> WSGIServer | None:
    """Serve the metrics when a port is given (`--metrics-port`, else MAILWRIGHT_METRICS_PORT)."""
    import typer

    if port is None:
        port = services.settings.metrics_port
    if port is None:
        return None
    server = start(services, host=host, port=port)
    typer.echo(f"Metrics on http://{host}:{server.server_port}/metrics")
    warning = open_warning(host)
    if warning is not None:
        typer.echo(warning, err=True)
    return server


def start(services: Services, *, host: str, port: int) -> WSGIServer:
    """Serve the metrics (this worker's, and the runs in the database) until the process ends."""
    from prometheus_client import start_http_server

    exposition = metrics.Exposition(read_runs=services.runs.gauges)
    where = f"{host}:{port}"
    try:
        server, _thread = start_http_server(port, addr=host, registry=exposition.registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot serve the metrics on {where}: the port is in use",
                hint=f"choose a free port with {PORT_OPTION}, or stop what listens there",
            ) from None
        if exc.errno == errno.EACCES:
            hint = f"ports under 1024 need privileges: choose another with {PORT_OPTION}"
        else:
            hint = "give --metrics-host an address of this machine (127.0.0.1, 0.0.0.0, ::)"
        raise ConfigError(f"cannot serve the metrics on {where}: {exc.strerror or exc}", hint=hint) from None
    return server


def open_warning(host: str) -> str | None:
    """The warning for metrics beyond loopback, where anyone who reaches the port reads them."""
    from mailwright.cli.serve import is_loopback

    if is_loopback(host):
        return None
    return (
        f"warning: the metrics on {host} need no token: anyone who reaches the port reads them "
        "(target names and message counts; no secrets).\n"
        "hint: keep --metrics-host 127.0.0.1 and scrape from this machine, or let only Prometheus "
        "through a firewall"
    )
