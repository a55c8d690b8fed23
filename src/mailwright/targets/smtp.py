"""SMTP Endpoint targets: settings, presets, the connection test, and sending through the pool.

The transport (aiosmtplib, the pool) is imported inside the functions that use it:
the CLI reads this module to build its options and must not load a protocol stack.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from mailwright.domain.capabilities import RateLimits, SendReport
from mailwright.domain.connection_test import ConnectionTestReport, report_from
from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import PORT_SECURITY, Security, default_security
from mailwright.domain.validation import validate_model
from mailwright.errors import ValidationError
from mailwright.plugins import Preset, TargetType, TargetView, register_target_type
from mailwright.targets.preset_data import load_presets
from mailwright.targets.server_settings import ServerSettings, server_view

if TYPE_CHECKING:
    from mailwright.transport.pool import SMTPPool
    from mailwright.transport.smtp import Login, SMTPEndpoint

PROTOCOL = "SMTP"


class SMTPSettings(ServerSettings):
    """What an SMTP Endpoint target stores besides its name and account key."""

    starttls_required: bool = Field(
        default=True,
        description="with starttls: fail when the server does not offer it",
        json_schema_extra={
            "form_flag": "starttls_optional",
            "shown_when": {"security": "starttls"},
            "flag_label": "STARTTLS optional (go on in plain text when the server does not offer it)",
            "flag_help": "with starttls: go on in plain text when it is not offered",
        },
    )
    ehlo_name: str | None = Field(
        default=None,
        description="client host name sent in EHLO",
        json_schema_extra={
            "label": "EHLO name",
            "help": "Client host name sent in EHLO; blank uses this host's name.",
            "group": "advanced",
            "blank_clears": True,
        },
    )
    # Provider limits, enforced per target across every run of the process (None: unlimited;
    # 0 given as input means the same, so that an update can remove a limit).
    rate_per_second: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="at most N messages per second (0: no limit)",
        json_schema_extra={
            "label": "Rate per second",
            "help": "At most this many messages per second; blank: no limit.",
            "group": "limits",
            "zero_clears": True,
        },
    )
    rate_per_minute: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="at most N messages per minute (0: no limit)",
        json_schema_extra={
            "label": "Rate per minute",
            "help": "At most this many messages per minute; blank: no limit.",
            "group": "limits",
            "zero_clears": True,
        },
    )
    rate_per_day: int | None = Field(
        default=None,
        ge=0,
        le=100_000_000,
        description="at most N messages per UTC day (0: no limit)",
        json_schema_extra={
            "label": "Rate per day",
            "help": "At most this many messages per UTC day; blank: no limit.",
            "group": "limits",
            "zero_clears": True,
        },
    )
    # The connection pool (transport/pool.py): providers cap messages per connection
    # (Gmail about 100, SendGrid 5,000) and close connections that idle too long.
    max_connections: int = Field(
        default=8,
        ge=1,
        le=256,
        description="pooled connections at once (default 8)",
        json_schema_extra={
            "label": "Max connections",
            "help": "SMTP connections open at once, 1 to 256 (default 8).",
            "group": "limits",
        },
    )
    max_messages_per_connection: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="messages before a connection is replaced (default 100; Gmail about 100)",
        json_schema_extra={
            "label": "Max messages per connection",
            "help": "A connection is replaced after this many messages; providers cap it (Gmail about 100). "
            "Default 100.",
            "group": "limits",
        },
    )
    idle_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="seconds before an unused connection closes",
        json_schema_extra={
            "label": "Idle timeout (seconds)",
            "help": "An unused connection is closed after this many seconds (default 30).",
            "group": "limits",
        },
    )
    data_timeout: float = Field(
        default=600.0,
        gt=0,
        le=3600,
        description="seconds to wait for the reply once a message is sent (default 600, per RFC 5321)",
        json_schema_extra={
            "label": "End-of-data timeout (seconds)",
            "help": "How long to wait for the server's answer once a message is sent (default 600, as RFC "
            "5321 asks). A message whose answer comes too late is recorded as unknown and not sent again "
            "on its own.",
            "group": "limits",
        },
    )

    @field_validator("rate_per_second", "rate_per_minute", "rate_per_day", mode="before")
    @classmethod
    def _no_limit(cls, value: Any) -> Any:
        return None if value == 0 and not isinstance(value, bool) else value

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
        from mailwright.transport.smtp import SMTPEndpoint
        from mailwright.transport.tls import build_ssl_context

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
    from mailwright.transport.outbound import outbound_policy

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
    from mailwright.transport.smtp import connection_report  # aiosmtplib, only when testing

    data = await connection_report(settings.endpoint(target_name), login)
    return report_from(data, protocol=PROTOCOL, server=settings.server)


def capture_settings(port: int) -> dict[str, Any]:
    """The stored settings of a target aimed at a local capture server (the sandbox) on `port`."""
    settings = settings_from_input({"server": "127.0.0.1", "port": port, "security": "none"})
    return settings.model_dump(mode="json")


def moved_capture(stored: dict[str, Any], port: int) -> dict[str, Any] | None:
    """Stored settings aimed at the local capture server, moved to its new `port`; None: unchanged."""
    if stored.get("server") != "127.0.0.1" or stored.get("port") == port:
        return None
    return {**stored, "port": port}


# --- how it is shown ---------------------------------------------------------------


def rate_limits_text(limits: RateLimits) -> str:
    pairs = ((limits.per_second, "second"), (limits.per_minute, "minute"), (limits.per_day, "day"))
    shown = [f"{value:,} message{'s' if value != 1 else ''} per {unit}" for value, unit in pairs if value]
    return ", ".join(shown) or "no limit"


def pool_text(settings: SMTPSettings) -> str:
    count = settings.max_connections
    return (
        f"up to {count} connection{'s' if count != 1 else ''}, "
        f"{settings.max_messages_per_connection:,} messages each, "
        f"closed after {settings.idle_timeout:g} s idle"
    )


def describe(settings: BaseModel, *, target_name: str, account_key: str | None) -> TargetView:
    assert isinstance(settings, SMTPSettings)
    return server_view(
        settings,
        protocol=PROTOCOL,
        target_name=target_name,
        account_key=account_key,
        optional_tls=settings.security is Security.STARTTLS and not settings.starttls_required,
        middle=[("EHLO name", settings.ehlo_name or "(this host's name)")],
        timeouts=f"end of data {settings.data_timeout:g} s",
        last=[
            ("Rate limits", rate_limits_text(RateLimits.of(settings))),
            ("Connection pool", pool_text(settings)),
        ],
    )


# --- sending: the target's connection pool ---------------------------------------------


@functools.lru_cache(maxsize=256)
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SMTPSender:
    """A `MailSender` on the target's shared connection pool (transport/pool.py).

    The pool is looked up when first used, in the event loop: making a sender (to read
    its limits, or to check that a target can send) needs neither a loop nor a connection.
    """

    def __init__(self, settings: SMTPSettings, pool: Callable[[], SMTPPool]) -> None:
        self._settings = settings
        self._lookup = pool
        self._found: SMTPPool | None = None
        self.where = settings.server
        self.rate_limits = RateLimits.of(settings)
        self.connections = settings.max_connections
        if settings.rate_per_second or settings.rate_per_minute:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                # Made now in the loop, so a shared rate limiter sees whether the pool can send
                # before it hands out a slot (services/shared_limits.py); no connection opens yet.
                self._found = pool()

    @property
    def _pool(self) -> SMTPPool:
        if self._found is None:
            self._found = self._lookup()
        return self._found

    @property
    def closed(self) -> bool:
        return self._found is not None and self._found.closed

    async def accepts_utf8(self) -> bool:
        return (await self._pool.capabilities()).smtputf8

    async def send(
        self,
        *,
        sender: str,
        recipients: list[tuple[str, bool]],
        data: bytes,
        utf8: bool,
        continue_if_one_address_valid: bool,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> SendReport:
        delivery = await self._pool.deliver(
            sender=sender,
            recipients=recipients,
            data=data,
            smtputf8=utf8,
            continue_if_one_address_valid=continue_if_one_address_valid,
            before_data=before_data,
        )
        return SendReport(
            recipients=[r.as_dict() for r in delivery.recipients],
            code=delivery.code,
            reply=delivery.reply,
            size=delivery.size,
            timings=dict(delivery.timings),
            warnings=self._warnings(tls=delivery.tls is not None),
        )

    def _warnings(self, *, tls: bool) -> list[str]:
        """What the user should know about how the message travelled."""
        out: list[str] = []
        if self._settings.disable_certificate_validation:
            out.append("certificate validation is disabled for this target: the server was not authenticated")
        if not tls and not _is_loopback(self._pool.endpoint.host):
            out.append("the message went to the server without TLS (in plain text)")
        return out


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def sender(settings: BaseModel, *, target_id: str, target_name: str, login: Login | None) -> SMTPSender:
    """The target's pooled sender; an edited target or account key gets fresh connections."""
    from mailwright.transport.pool import PoolLimits, shared_pools  # the pool, and aiosmtplib with it

    assert isinstance(settings, SMTPSettings)
    # Compared, never shown: the secret enters as a digest, so a changed password is a new pool.
    identity = (
        settings,
        target_name,  # named in the connections' errors
        login.key_name if login else None,
        login.username if login else None,
        _digest(login.password.reveal()) if login else None,
    )
    limits = PoolLimits(
        max_connections=settings.max_connections,
        max_messages_per_connection=settings.max_messages_per_connection,
        idle_timeout=settings.idle_timeout,
    )
    return SMTPSender(
        settings,
        lambda: shared_pools().pool(
            target_id=target_id,
            identity=identity,
            endpoint=lambda: settings.endpoint(target_name),
            login=login,
            limits=limits,
        ),
    )


SMTP_ENDPOINT = register_target_type(
    TargetType(
        name="smtp",
        label="SMTP Endpoint",
        protocol=PROTOCOL,
        settings_model=SMTPSettings,
        account_key_types=("email_credentials", "oauth2"),
        settings_from_input=_from_input,
        run_test=_run_test,
        describe=describe,
        presets=load_presets("smtp"),
        sender=sender,
        form_defaults={"port": 587, "security": "starttls"},
        linked_values={"port": {str(port): {"security": mode.value} for port, mode in PORT_SECURITY.items()}},
    )
)
