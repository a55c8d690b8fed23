"""What IMAP and POP3 Endpoint targets share: settings, defaults by port, the report."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import Security
from mailwright.domain.validation import validate_model
from mailwright.errors import ValidationError
from mailwright.plugins import Preset, TargetType
from mailwright.targets.preset_data import load_presets
from mailwright.targets.report import ConnectionTestReport, report_from
from mailwright.targets.server_settings import ServerSettings
from mailwright.transport.base import Login
from mailwright.transport.outbound import outbound_policy
from mailwright.transport.tls import build_ssl_context


class MailboxSettings(ServerSettings):
    """An IMAP or POP3 server: where it is, how TLS is done, how often a trigger polls."""

    polling_interval: float = Field(default=30.0, ge=5, le=86_400, description="seconds between polls")

    # The transport's endpoint class (IMAPEndpoint, POP3Endpoint), set by each type.
    endpoint_class: ClassVar[type[Any]]

    def endpoint(self, target_name: str) -> Any:
        return self.endpoint_class(**self.endpoint_fields(target_name))

    def endpoint_fields(self, target_name: str) -> dict[str, Any]:
        return {
            "target_name": target_name,
            "host": ascii_host(self.server),
            "port": self.port,
            "security": self.security,
            "ssl_context": build_ssl_context(
                ca_file=self.ca_file, verify=not self.disable_certificate_validation
            ),
            "connect_timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
        }


def check_mailbox_port(
    port: int, security: Security, *, protocol: str, ssl_port: int, plain_port: int
) -> None:
    if port == ssl_port and security is not Security.SSL:
        raise ValidationError(
            f"port {ssl_port} expects implicit TLS (ssl); this target is set to {security.value}",
            field="security",
            hint=f"choose ssl, or use port {plain_port} for starttls",
        )
    if port == plain_port and security is Security.SSL:
        raise ValidationError(
            f"port {plain_port} speaks plain {protocol} first and upgrades with STARTTLS; "
            "this target is set to ssl",
            field="security",
            hint=f"choose starttls, or use port {ssl_port} for ssl",
        )


def mailbox_settings(
    model: type[MailboxSettings],
    values: dict[str, Any],
    preset: Preset | None,
    *,
    protocol: str,
    ssl_port: int,
    plain_port: int,
) -> MailboxSettings:
    merged: dict[str, Any] = dict(preset.settings) if preset else {}
    if "port" in values and values.get("security") is None:
        merged.pop("security", None)  # another port brings its own security mode
    merged.update({k: v for k, v in values.items() if v is not None})
    for unknown in ("starttls_required", "ehlo_name"):
        if unknown in merged:
            raise ValidationError(f"{protocol} Endpoint targets have no {unknown}", field=unknown)
    if "server" not in merged:
        raise ValidationError(f"the {protocol} server is required", field="server", hint="or use a preset")
    merged.setdefault("port", ssl_port)
    if "security" not in merged:
        merged["security"] = Security.STARTTLS if merged["port"] == plain_port else Security.SSL
    settings = validate_model(model, merged)
    check_mailbox_port(
        settings.port, settings.security, protocol=protocol, ssl_port=ssl_port, plain_port=plain_port
    )
    outbound_policy().check_literal(settings.server)  # names are checked when they are resolved
    return settings


def mailbox_target_type(
    *,
    name: str,
    protocol: str,
    ssl_port: int,
    plain_port: int,
    settings_model: type[MailboxSettings],
    report: Callable[[Any, Login | None], Awaitable[dict[str, Any]]],
) -> TargetType:
    """The TargetType of a mailbox protocol: settings by port, presets from data, its report."""

    def from_input(values: dict[str, Any], preset: Preset | None) -> BaseModel:
        return mailbox_settings(
            settings_model, values, preset, protocol=protocol, ssl_port=ssl_port, plain_port=plain_port
        )

    async def run_test(settings: BaseModel, *, target_name: str, login: Login | None) -> ConnectionTestReport:
        assert isinstance(settings, settings_model)
        data = await report(settings.endpoint(target_name), login)
        return report_from(data, protocol=protocol, server=settings.server)

    return TargetType(
        name=name,
        label=f"{protocol} Endpoint",
        protocol=protocol,
        settings_model=settings_model,
        account_key_types=("email_credentials",),
        settings_from_input=from_input,
        run_test=run_test,
        presets=load_presets(name),
    )
