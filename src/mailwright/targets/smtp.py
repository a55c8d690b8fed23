"""SMTP Endpoint targets: settings, presets, and the connection test."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import PORT_SECURITY, Security, default_security
from mailwright.domain.validation import validate_model
from mailwright.errors import ValidationError
from mailwright.plugins import Preset, TargetType, register_target_type
from mailwright.targets.preset_data import load_presets
from mailwright.targets.report import ConnectionTestReport, report_from
from mailwright.targets.server_settings import ServerSettings
from mailwright.transport.outbound import outbound_policy
from mailwright.transport.smtp import Login, SMTPEndpoint, connection_report
from mailwright.transport.tls import build_ssl_context

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


async def run_connection_test(
    settings: SMTPSettings, *, target_name: str, login: Login | None
) -> ConnectionTestReport:
    """Connect, TLS, EHLO, AUTH, QUIT; on failure the error names the fix."""
    data = await connection_report(settings.endpoint(target_name), login)
    return report_from(data, protocol=PROTOCOL, server=settings.server)


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
