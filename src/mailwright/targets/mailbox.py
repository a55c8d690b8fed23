"""What IMAP and POP3 Endpoint targets share: settings, defaults by port, the report, the mailbox.

Their transports are imported inside the functions that use them (see targets/smtp.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mailwright.domain.capabilities import Mailbox
from mailwright.domain.connection_test import ConnectionTestReport, report_from
from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import Security
from mailwright.domain.validation import validate_model
from mailwright.errors import ValidationError
from mailwright.plugins import Preset, TargetType, TargetView
from mailwright.targets import common_fields
from mailwright.targets.preset_data import load_presets
from mailwright.targets.server_settings import ServerSettings, server_view

if TYPE_CHECKING:
    from mailwright.transport.base import Login


class MailboxSettings(ServerSettings):
    """An IMAP or POP3 server: where it is, how TLS is done, how often a trigger polls."""

    polling_interval: float = common_fields.polling_interval(
        "How often a mail trigger checks this mailbox when IDLE is not available."
    )

    def endpoint_fields(self, target_name: str) -> dict[str, Any]:
        from mailwright.transport.tls import build_ssl_context

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
    from mailwright.transport.outbound import outbound_policy

    outbound_policy().check_literal(settings.server)  # names are checked when they are resolved
    return settings


Report = Callable[[Any, str, "Login | None"], Awaitable[dict[str, Any]]]
OpenMailbox = Callable[..., AbstractAsyncContextManager[Mailbox]]


def mailbox_target_type(
    *,
    name: str,
    protocol: str,
    ssl_port: int,
    plain_port: int,
    settings_model: type[MailboxSettings],
    report: Report,
    mailbox: OpenMailbox,
    folders: bool,
) -> TargetType:
    """The TargetType of a mailbox protocol: settings by port, presets from data, its report and mailbox.

    `report(settings, target_name, login)` runs the transport's connection report;
    `mailbox(settings, target_name=..., login=...)` opens the mailbox.
    """

    def from_input(values: dict[str, Any], preset: Preset | None) -> BaseModel:
        return mailbox_settings(
            settings_model, values, preset, protocol=protocol, ssl_port=ssl_port, plain_port=plain_port
        )

    async def run_test(settings: BaseModel, *, target_name: str, login: Login | None) -> ConnectionTestReport:
        assert isinstance(settings, settings_model)
        data = await report(settings, target_name, login)
        return report_from(data, protocol=protocol, server=settings.server)

    def describe(settings: BaseModel, *, target_name: str, account_key: str | None) -> TargetView:
        assert isinstance(settings, settings_model)
        return server_view(
            settings,
            protocol=protocol,
            target_name=target_name,
            account_key=account_key,
            middle=[("Polling interval", f"{settings.polling_interval:g} s")],
        )

    return TargetType(
        name=name,
        label=f"{protocol} Endpoint",
        protocol=protocol,
        settings_model=settings_model,
        account_key_types=("email_credentials", "oauth2"),
        settings_from_input=from_input,
        run_test=run_test,
        describe=describe,
        presets=load_presets(name),
        mailbox=mailbox,
        mailbox_folders=folders,
        poll_seconds=lambda settings: float(getattr(settings, "polling_interval", 30.0)),
        form_defaults={"port": ssl_port, "security": Security.SSL.value},
        linked_values={
            "port": {
                str(ssl_port): {"security": Security.SSL.value},
                str(plain_port): {"security": Security.STARTTLS.value},
            }
        },
    )
