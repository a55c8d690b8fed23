"""`mailwright targets`: SMTP Endpoint targets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailwright.cli.context import services
from mailwright.cli.output import EXIT_FAILED, print_fields, print_json, print_table
from mailwright.domain.smtp import Security

if TYPE_CHECKING:
    from mailwright.services.targets import TargetPublic
    from mailwright.targets.report import ConnectionTestReport

app = typer.Typer(help="Targets: the mail servers Mailwright talks to.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
Server = Annotated[str | None, typer.Option("--server", help="SMTP server: host name, IDN or IP")]
Port = Annotated[int | None, typer.Option("--port", help="465 (ssl), 587 (starttls), 25")]
SecurityOpt = Annotated[
    Security | None,
    typer.Option("--security", help="ssl (implicit TLS), starttls or none; default from the port"),
]
AccountKey = Annotated[str | None, typer.Option("--account-key", help="default account key (name or id)")]
NoAccountKeys = Annotated[bool, typer.Option("--no-account-keys", help="no login: an open relay")]
CaFile = Annotated[str | None, typer.Option("--ca-file", help="PEM file of the CA to trust for this target")]
NoVerify = Annotated[
    bool | None,
    typer.Option("--disable-certificate-validation", help="accept any certificate (unsafe, reported)"),
]
EhloName = Annotated[str | None, typer.Option("--ehlo-name", help="client host name sent in EHLO")]
Timeout = Annotated[float | None, typer.Option("--timeout", help="seconds for each command (and connecting)")]
ConnectTimeout = Annotated[
    float | None, typer.Option("--connect-timeout", help="seconds to connect and get the greeting")
]
StarttlsOptional = Annotated[
    bool | None,
    typer.Option("--starttls-optional", help="with starttls: go on in plain text when it is not offered"),
]
Description = Annotated[str | None, typer.Option("--description")]
PollingInterval = Annotated[
    float | None,
    typer.Option("--polling-interval", help="imap/pop3: seconds between polls of a mail trigger"),
]
RatePerSecond = Annotated[
    int | None, typer.Option("--rate-per-second", help="smtp: at most N messages per second (0: no limit)")
]
RatePerMinute = Annotated[
    int | None, typer.Option("--rate-per-minute", help="smtp: at most N messages per minute (0: no limit)")
]
RatePerDay = Annotated[
    int | None,
    typer.Option("--rate-per-day", help="smtp: at most N messages per UTC day (0: no limit)"),
]
MaxConnections = Annotated[
    int | None, typer.Option("--max-connections", help="smtp: pooled connections at once (default 8)")
]
MaxMessagesPerConnection = Annotated[
    int | None,
    typer.Option(
        "--max-messages-per-connection",
        help="smtp: messages before a connection is replaced (default 100; Gmail about 100)",
    ),
]
DataTimeout = Annotated[
    float | None,
    typer.Option(
        "--data-timeout",
        help="smtp: seconds to wait for the reply once a message is sent (default 600, per RFC 5321)",
    ),
]
IdleTimeout = Annotated[
    float | None, typer.Option("--idle-timeout", help="smtp: seconds before an unused connection closes")
]


def _settings(**values: Any) -> dict[str, Any]:
    timeout = values.pop("timeout")
    connect_timeout = values.pop("connect_timeout")
    if values.get("starttls_optional") is not None:
        values["starttls_required"] = not values.pop("starttls_optional")
    values.pop("starttls_optional", None)
    if timeout is not None:
        values["command_timeout"] = timeout
        values["connect_timeout"] = timeout
    if connect_timeout is not None:
        values["connect_timeout"] = connect_timeout
    return {k: v for k, v in values.items() if v is not None}


def _timeouts(t: TargetPublic) -> str:
    text = f"connect {t.connect_timeout:g} s, command {t.command_timeout:g} s"
    return text if t.data_timeout is None else f"{text}, end of data {t.data_timeout:g} s"


def _show(t: TargetPublic) -> None:
    last = t.last_test
    print_fields(
        [
            ("Display Name", t.display_name),
            ("Type", t.type_label),
            ("Description", t.description),
            (f"{t.protocol} Server", t.server),
            (f"{t.protocol} Port", t.port),
            ("Protocol", t.protocol),
            ("Security", t.security.value + (" (optional)" if _optional_starttls(t) else "")),
            ("No Account Keys", t.no_account_keys),
            ("Account Key", t.account_key or ""),
            ("CA file", t.ca_file or "(system trust store)"),
            (
                "Certificates",
                "NOT VALIDATED (unsafe)" if t.disable_certificate_validation else "validated",
            ),
            *([("EHLO name", t.ehlo_name or "(this host's name)")] if t.protocol == "SMTP" else []),
            *([("Polling interval", f"{t.polling_interval:g} s")] if t.polling_interval else []),
            ("Timeouts", _timeouts(t)),
            *([("Rate limits", rates)] if (rates := t.rate_limits_text()) else []),
            *([("Connection pool", pool)] if (pool := t.pool_text()) else []),
            (
                "Last test",
                f"{'OK' if last.ok else 'FAILED'} at {last.at:%Y-%m-%d %H:%M} — {last.summary}"
                if last
                else "never",
            ),
            ("ID", t.id),
        ]
    )


def _optional_starttls(t: TargetPublic) -> bool:
    return t.security is Security.STARTTLS and not t.starttls_required


def _warn_unsafe(t: TargetPublic) -> None:
    if t.security is Security.NONE and t.account_key:
        typer.secho(
            f"warning: THE LOGIN TRAVELS IN CLEAR TEXT: {t.display_name!r} has no TLS, so the password "
            f"of account key {t.account_key!r} crosses the network unencrypted (choose ssl or starttls)",
            fg="yellow",
            err=True,
        )
    if t.disable_certificate_validation:
        typer.secho(
            f"warning: certificate validation is DISABLED for {t.display_name!r}; anyone on the "
            "network path can impersonate the server (use --ca-file instead)",
            fg="yellow",
            err=True,
        )


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="unique display name")],
    target_type: Annotated[str, typer.Option("--type", help="target type: smtp, imap or pop3")] = "smtp",
    preset: Annotated[
        str | None, typer.Option("--preset", help="gmail, outlook, yahoo, icloud, fastmail, zoho")
    ] = None,
    server: Server = None,
    port: Port = None,
    security: SecurityOpt = None,
    account_key: AccountKey = None,
    no_account_keys: NoAccountKeys = False,
    ca_file: CaFile = None,
    disable_certificate_validation: NoVerify = None,
    ehlo_name: EhloName = None,
    timeout: Timeout = None,
    connect_timeout: ConnectTimeout = None,
    starttls_optional: StarttlsOptional = None,
    polling_interval: PollingInterval = None,
    rate_per_second: RatePerSecond = None,
    rate_per_minute: RatePerMinute = None,
    rate_per_day: RatePerDay = None,
    max_connections: MaxConnections = None,
    max_messages_per_connection: MaxMessagesPerConnection = None,
    idle_timeout: IdleTimeout = None,
    data_timeout: DataTimeout = None,
    description: Description = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a target. Give --account-key NAME, or --no-account-keys for an open relay."""
    values = _settings(
        server=server,
        port=port,
        security=security,
        ca_file=ca_file,
        disable_certificate_validation=disable_certificate_validation,
        ehlo_name=ehlo_name,
        timeout=timeout,
        connect_timeout=connect_timeout,
        starttls_optional=starttls_optional,
        polling_interval=polling_interval,
        rate_per_second=rate_per_second,
        rate_per_minute=rate_per_minute,
        rate_per_day=rate_per_day,
        max_connections=max_connections,
        max_messages_per_connection=max_messages_per_connection,
        idle_timeout=idle_timeout,
        data_timeout=data_timeout,
    )
    from mailwright.services.targets import TargetCreate

    target = services().targets.create(
        TargetCreate(
            display_name=name,
            type=target_type,
            preset=preset,
            description=description,
            account_key=account_key,
            no_account_keys=no_account_keys,
            **values,
        )
    )
    _warn_unsafe(target)
    if as_json:
        print_json(target)
    else:
        typer.echo(
            f"created {target.type_label} target {target.display_name!r}: "
            f"{target.server}:{target.port} {target.security.value} ({target.id})"
        )


@app.command("list")
def list_targets(as_json: JsonOpt = False) -> None:
    """List targets with their last test result."""
    targets = services().targets.list_all()
    if as_json:
        print_json(targets)
        return
    print_table(
        ["DISPLAY NAME", "TYPE", "SERVER", "SECURITY", "ACCOUNT KEY", "LAST TEST"],
        [
            [
                t.display_name,
                t.type_label,
                f"{t.server}:{t.port}",
                t.security.value,
                t.account_key or "(none)",
                ("OK" if t.last_test.ok else "FAILED") if t.last_test else "never",
            ]
            for t in targets
        ],
    )


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="display name or id")], as_json: JsonOpt = False) -> None:
    """Show one target."""
    target = services().targets.get(ref)
    if as_json:
        print_json(target)
    else:
        _show(target)
    _warn_unsafe(target)


@app.command("update")
def update(
    ref: Annotated[str, typer.Argument(help="display name or id")],
    name: Annotated[str | None, typer.Option("--name", help="new display name")] = None,
    server: Server = None,
    port: Port = None,
    security: SecurityOpt = None,
    account_key: AccountKey = None,
    no_account_keys: Annotated[
        bool | None, typer.Option("--no-account-keys", help="no login: an open relay")
    ] = None,
    ca_file: CaFile = None,
    disable_certificate_validation: Annotated[
        bool | None,
        typer.Option(
            "--disable-certificate-validation/--enable-certificate-validation",
            help="turn certificate validation off (unsafe) or back on",
        ),
    ] = None,
    ehlo_name: EhloName = None,
    timeout: Timeout = None,
    connect_timeout: ConnectTimeout = None,
    starttls_optional: Annotated[
        bool | None,
        typer.Option("--starttls-optional/--starttls-required", help="with starttls: is it optional?"),
    ] = None,
    polling_interval: PollingInterval = None,
    rate_per_second: RatePerSecond = None,
    rate_per_minute: RatePerMinute = None,
    rate_per_day: RatePerDay = None,
    max_connections: MaxConnections = None,
    max_messages_per_connection: MaxMessagesPerConnection = None,
    idle_timeout: IdleTimeout = None,
    data_timeout: DataTimeout = None,
    description: Description = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a target; only the options given change."""
    values = _settings(
        server=server,
        port=port,
        security=security,
        ca_file=ca_file,
        disable_certificate_validation=disable_certificate_validation,
        ehlo_name=ehlo_name,
        timeout=timeout,
        connect_timeout=connect_timeout,
        starttls_optional=starttls_optional,
        polling_interval=polling_interval,
        rate_per_second=rate_per_second,
        rate_per_minute=rate_per_minute,
        rate_per_day=rate_per_day,
        max_connections=max_connections,
        max_messages_per_connection=max_messages_per_connection,
        idle_timeout=idle_timeout,
        data_timeout=data_timeout,
    )
    from mailwright.services.targets import TargetUpdate

    target = services().targets.update(
        ref,
        TargetUpdate(
            display_name=name,
            description=description,
            account_key=account_key,
            no_account_keys=no_account_keys,
            **values,
        ),
    )
    _warn_unsafe(target)
    if as_json:
        print_json(target)
    else:
        typer.echo(f"updated target {target.display_name!r}")


@app.command("delete")
def delete(ref: Annotated[str, typer.Argument(help="display name or id")]) -> None:
    """Delete a target."""
    target = services().targets.get(ref)
    services().targets.delete(target.id)
    typer.echo(f"deleted target {target.display_name!r}")


@app.command("test")
def run_test(
    ref: Annotated[str, typer.Argument(help="display name or id")], as_json: JsonOpt = False
) -> None:
    """Connect, TLS, EHLO, AUTH, QUIT; explain what is misconfigured. Exit 1 on failure."""
    import asyncio

    report = asyncio.run(services().targets.test(ref))
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def capabilities_line(caps: dict[str, Any]) -> str:
    """Every protocol's capabilities in one line: yes/no flags, lists, sizes."""
    parts = []
    for key, value in caps.items():
        if key == "raw":
            continue
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif isinstance(value, list):
            shown = " ".join(str(v) for v in value) or "none"
        else:
            shown = "none" if value is None else str(value)
        parts.append(f"{key.upper()} {shown}")
    return ", ".join(parts)


def _print_report(report: ConnectionTestReport) -> None:
    key = f"account key {report.account_key!r}" if report.account_key else "no account key"
    typer.echo(
        f"Target {report.target!r}: {report.server}:{report.port} {report.protocol}, {report.security}, {key}"
    )
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        typer.echo(f"  {mark} {step.name:<9} {step.ms:8.1f} ms")
    if report.greeting:
        typer.echo(f"Greeting: {report.greeting}")
    if report.tls:
        cert = report.tls.get("certificate") or {}
        verified = "verified" if report.tls["verified"] else "NOT verified"
        typer.echo(f"TLS: {report.tls['version']} {report.tls['cipher']}, certificate {verified}")
        if cert:
            typer.echo(
                f"  subject {cert['subject']}; issuer {cert['issuer']}; names {', '.join(cert['names'])}"
            )
    if report.capabilities:
        typer.echo("Capabilities: " + capabilities_line(report.capabilities))
    if report.authenticated_as:
        typer.echo(f"Authenticated as {report.authenticated_as}")
    for warning in report.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    if report.ok:
        typer.secho(f"OK in {report.total_ms:.0f} ms", fg="green")
        return
    error = report.error or {}
    typer.secho(f"error: {error.get('message')}", fg="red", err=True)
    if error.get("hint"):
        typer.echo(f"hint: {error['hint']}", err=True)
