"""`mailwright serve`: the API (and later the web UI) on the embedded defaults."""

from enum import StrEnum
from typing import Annotated

import typer

from mailwright.cli.context import services


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only listens on this machine."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


def plain_http_warning(host: str, *, https_in_front: bool) -> str | None:
    """The warning for listening beyond loopback over plain HTTP, or None."""
    if https_in_front or is_loopback(host):
        return None
    return (
        f"warning: listening on {host} over plain HTTP: passwords, API tokens and session cookies "
        "would cross the network unencrypted.\n"
        "hint: put an HTTPS reverse proxy in front and set MAILWRIGHT_PUBLIC_URL=https://... "
        "(or pass --behind-https), or listen on 127.0.0.1"
    )


def serve(
    host: Annotated[str | None, typer.Option("--host", help="address to listen on (MAILWRIGHT_HOST)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port to listen on (MAILWRIGHT_PORT)")] = None,
    sandbox_port: Annotated[
        int | None,
        typer.Option(
            "--sandbox-port", help="port of the capture SMTP server on 127.0.0.1 (MAILWRIGHT_SANDBOX_PORT)"
        ),
    ] = None,
    no_sandbox: Annotated[
        bool, typer.Option("--no-sandbox", help="do not start the capture SMTP server")
    ] = False,
    print_token: Annotated[
        bool,
        typer.Option(
            "--print-token", help="on first start, also print the admin token (it goes to the logs too)"
        ),
    ] = False,
    behind_https: Annotated[
        bool,
        typer.Option(
            "--behind-https",
            help="an HTTPS reverse proxy is in front: cookies are Secure (MAILWRIGHT_BEHIND_HTTPS)",
        ),
    ] = False,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker",
            help="execute no runs here: `mailwright worker` processes do (on this or other machines)",
        ),
    ] = False,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            case_sensitive=False,
            help="how much to log (MAILWRIGHT_LOG_LEVEL, default info); debug also shows every SMTP "
            "command the sandbox receives",
        ),
    ] = None,
) -> None:
    """Run the service: REST API at /api/v1, OpenAPI at /api/openapi.json."""
    # Imported here so that every other command starts without the web stack.
    import logging

    import uvicorn

    from mailwright.logs import configure_logging
    from mailwright.sandbox import SANDBOX_DIRECTORY_NAME, SANDBOX_TARGET_NAME, SandboxServer, SandboxStore
    from mailwright.server import create_app

    svc = services()
    settings = svc.settings
    if behind_https:
        settings.behind_https = True
    if log_level is not None:
        settings.log_level = log_level.value
    configure_logging(settings.log_level)
    first = svc.first_start_token()
    if first is not None:  # the token itself stays out of stdout (journald, container logs)
        typer.echo(f"First start: an admin API token was created and written to {first[0]} (mode 0600).")
        if print_token:
            typer.echo(f"  {first[1]}")
        typer.echo("Send it as 'Authorization: Bearer TOKEN'; store it safely, then delete the file.")
    bind_host = host or settings.host
    bind_port = port or settings.port
    warning = plain_http_warning(bind_host, https_in_front=settings.secure_cookies)
    if warning is not None:
        typer.echo(warning, err=True)
    typer.echo(f"Mailwright on http://{bind_host}:{bind_port}/  (API: /api/v1; data: {settings.home})")
    store = SandboxStore(settings.home / SANDBOX_DIRECTORY_NAME)
    capture = None
    if not no_sandbox and settings.sandbox:
        port_wanted = sandbox_port if sandbox_port is not None else settings.sandbox_port
        capture = SandboxServer(store, port=port_wanted).start()
        svc.targets.ensure_sandbox_target(name=SANDBOX_TARGET_NAME, port=capture.port)
        typer.echo(f"Sandbox: SMTP on 127.0.0.1:{capture.port} captures mail; see /sandbox")
    app = create_app(
        svc,
        sandbox_store=store,
        sandbox_address=f"127.0.0.1:{capture.port}" if capture else None,
        run_worker=not no_worker,
    )
    if no_worker:
        typer.echo("No worker here: runs are executed by `mailwright worker` processes.")
    config = uvicorn.Config(app, host=bind_host, port=bind_port, log_config=None, access_log=False)
    logging.getLogger(__name__).info("database %s", svc.db.engine.url.render_as_string(hide_password=True))
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        # uvicorn raises the Ctrl-C again once it has shut down in order: a normal stop, exit 0
        # (`make run` would otherwise end with "Error 130").
        pass
    finally:
        if capture is not None:
            capture.stop()
