"""SMTP Endpoint targets: settings, presets, and the connection test."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field, field_validator

from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import PORT_SECURITY, Security, default_security
from mailwright.domain.validation import validate_model
from mailwright.errors import TargetError, ValidationError
from mailwright.plugins import Preset, TargetType, register_target_type
from mailwright.targets.preset_data import load_presets
from mailwright.targets.report import ConnectionTestReport, ConnectionTestStep
from mailwright.targets.server_settings import ServerSettings
from mailwright.transport.outbound import outbound_policy
from mailwright.transport.smtp import Login, SMTPConnection, SMTPEndpoint
from mailwright.transport.tls import build_ssl_context, clear_text_login_warning

PROTOCOL = "SMTP"


class SMTPSettings(ServerSettings):
    """What an SMTP Endpoint target stores besides its name and account key."""

    starttls_required: bool = Field(
        default=True, description="with starttls: fail when the server does not offer it"
    )
    ehlo_name: str | None = Field(default=None, description="client host name sent in EHLO")
    data_timeout: float = Field(
        default=600.0, gt=0, le=3600, description="seconds to wait for the reply to a message's end of data"
    )
    # The connection pool (transport/pool.py): providers cap messages per connection
    # (Gmail about 100, SendGrid 5,000) and close connections that idle too long.
    max_connections: int = Field(default=8, ge=1, le=256, description="concurrent connections")
    max_messages_per_connection: int = Field(
        default=100, ge=1, le=100_000, description="messages before a connection is replaced"
    )
    idle_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="seconds before an unused connection is closed"
    )
    # Provider limits, enforced per target across every run of the process (None: unlimited).
    rate_per_second: int | None = Field(default=None, ge=1, le=100_000, description="messages per second")
    rate_per_minute: int | None = Field(default=None, ge=1, le=1_000_000, description="messages per minute")
    rate_per_day: int | None = Field(
        default=None, ge=1, le=100_000_000, description="messages per calendar day (UTC)"
    )

    @field_validator("ehlo_name")
    @classmethod
    def _ehlo(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return ascii_host(value, field="ehlo_name")

    def check_port_security(self) -> None:
        check_port_security(self.port, self.security)

    @property
    def protocol(self) -> str:
        return PROTOCOL

    def endpoint(self, target_name: str) -> SMTPEndpoint:
        return SMTPEndpoint(
            target_name=target_name,
            host=ascii_host(self.server),
            port=self.port,
            security=self.security,
            starttls_required=self.starttls_required,
            ssl_context=build_ssl_context(
                ca_file=self.ca_file, verify=not self.disable_certificate_validation
            ),
            ehlo_name=self.ehlo_name,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            data_timeout=self.data_timeout,
        )


def check_port_security(port: int, security: Security) -> None:
    """Refuse a security mode that the well-known port cannot speak."""
    expected = PORT_SECURITY.get(port)
    if expected is None or expected is security:
        return
    if expected is Security.SSL:
        raise ValidationError(
            f"port {port} expects implicit TLS (ssl); this target is set to {security.value}",
            field="security",
            hint="choose ssl, or use port 587 for starttls",
        )
    if security is Security.SSL:
        raise ValidationError(
            f"port {port} speaks plain SMTP first and upgrades with STARTTLS; this target is set to ssl",
            field="security",
            hint="choose starttls, or use port 465 for ssl",
        )


def settings_from_input(values: dict[str, Any], *, preset: Preset | None = None) -> SMTPSettings:
    """Settings from user input: preset first, explicit values over it, defaults by port."""
    merged: dict[str, Any] = dict(preset.settings) if preset else {}
    if preset and "port" in values and "security" not in values:
        # A preset with another port (Gmail 587) brings that port's security.
        for alternative in preset.alternatives:
            if alternative["port"] == values["port"]:
                merged["security"] = alternative["security"]
    merged.update({k: v for k, v in values.items() if v is not None})
    if "server" not in merged:
        raise ValidationError("the SMTP server is required", field="server", hint="or use a preset")
    if "port" not in merged:
        raise ValidationError("the SMTP port is required", field="port", hint="465 for ssl, 587 for starttls")
    port = merged["port"]
    if "security" not in merged and isinstance(port, int):
        merged["security"] = default_security(port)
        # Port 25 upgrades when it can: relays there often have no certificate.
        merged.setdefault("starttls_required", port != 25)
    settings = validate_model(SMTPSettings, merged)
    outbound_policy().check_literal(settings.server)  # names are checked when they are resolved
    return settings


def _from_input(values: dict[str, Any], preset: Preset | None) -> SMTPSettings:
    return settings_from_input(values, preset=preset)


async def _run_test(settings: BaseModel, *, target_name: str, login: Login | None) -> ConnectionTestReport:
    assert isinstance(settings, SMTPSettings)
    return await run_connection_test(settings, target_name=target_name, login=login)


# --- the connection test ---------------------------------------------------------


_STEP_ORDER = ("connect", "ehlo", "starttls", "auth", "quit")


async def run_connection_test(
    settings: SMTPSettings, *, target_name: str, login: Login | None
) -> ConnectionTestReport:
    """Connect, TLS, EHLO, AUTH, QUIT; on failure the error names the fix."""
    report = ConnectionTestReport(
        ok=False,
        target=target_name,
        protocol=PROTOCOL,
        server=settings.server,
        port=settings.port,
        security=settings.security.value,
        account_key=login.key_name if login else None,
    )
    started = time.perf_counter()
    connection = SMTPConnection(settings.endpoint(target_name))
    failed_stage: str | None = None
    try:
        await connection.open(login)
        report.ok = True
    except TargetError as exc:
        failed_stage = exc.stage
        report.error = exc.details()
    finally:
        await connection.close()
    report.total_ms = round((time.perf_counter() - started) * 1000, 2)
    report.steps = [
        ConnectionTestStep(name=name, ok=name != failed_stage, ms=connection.timings[name])
        for name in _STEP_ORDER
        if name in connection.timings
    ]
    report.greeting = connection.greeting
    report.capabilities = connection.capabilities.as_dict() if connection.greeting else {}
    if connection.tls is not None:
        cert = connection.tls.certificate
        report.tls = {
            "version": connection.tls.version,
            "cipher": connection.tls.cipher,
            "verified": connection.tls.verified,
            "certificate": cert.as_dict() if cert else None,
        }
    report.authenticated_as = connection.authenticated_as
    report.auth_mechanism = connection.auth_mechanism
    report.warnings = _warnings(settings, connection, login)
    return report


def _warnings(settings: SMTPSettings, connection: SMTPConnection, login: Login | None) -> list[str]:
    out: list[str] = []
    if settings.disable_certificate_validation:
        out.append(
            "certificate validation is DISABLED for this target: anyone on the network path "
            "can impersonate the server and read the password and mail; give a CA file instead"
        )
    if settings.security is Security.NONE:
        if login is not None:
            out.append(clear_text_login_warning(login.key_name, ssl_port=465))
        out.append("no TLS: the password and mail cross the network in plain text")
    elif (
        connection.greeting
        and settings.security is Security.STARTTLS
        and not connection.capabilities.starttls
        and connection.tls is None
    ):
        out.append("the server did not offer STARTTLS: mail would go in plain text")
    caps = connection.capabilities
    if login is None and caps.auth:
        out.append(
            f"the server offers AUTH ({' '.join(caps.auth)}) but this target has No Account "
            "Keys: if it requires a login, sends fail with 530"
        )
    return out


SMTP_ENDPOINT = register_target_type(
    TargetType(
        name="smtp",
        label="SMTP Endpoint",
        protocol=PROTOCOL,
        settings_model=SMTPSettings,
        account_key_types=("email_credentials",),
        settings_from_input=_from_input,
        run_test=_run_test,
        presets=load_presets("smtp"),
    )
)
