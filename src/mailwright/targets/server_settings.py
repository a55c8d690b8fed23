"""What every target type's settings share: the server, its port and TLS, timeouts."""

from __future__ import annotations

from typing import Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import Security
from mailwright.errors import ValidationError
from mailwright.plugins import TargetView
from mailwright.targets import common_fields


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    server: str = Field(
        description="host name, IDN or IP address of the server",
        json_schema_extra={
            "label": "{protocol} Server",
            "help": "The server's host name, e.g. smtp.gmail.com",
        },
    )
    port: int = Field(
        ge=1,
        le=65535,
        description="the server's port; the security mode follows from it unless given",
        json_schema_extra={
            "label": "{protocol} Port",
            "help": "SMTP: 465 (SSL), 587 (STARTTLS) or 25; IMAP: 993 or 143; POP3: 995 or 110",
        },
    )
    security: Security = Field(
        description="ssl (implicit TLS), starttls or none; default from the port",
        json_schema_extra={
            "label": "Security",
            "choice_labels": {"ssl": "SSL / implicit TLS", "starttls": "STARTTLS", "none": "None (no TLS)"},
        },
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the CA to trust for this target",
        json_schema_extra={
            "label": "CA file (PEM path on the server)",
            "help": "Trust this CA for the target instead of the system store.",
            "group": "advanced",
            "blank_clears": True,
        },
    )
    disable_certificate_validation: bool = Field(
        default=False,
        validation_alias=AliasChoices("disable_certificate_validation", "ignore_certificate_errors"),
        description="accept any certificate (unsafe; reported loudly)",
        json_schema_extra={
            "label": "Disable certificate validation",
            "help": "Unsafe: anyone on the network path could read the password and mail.",
            "group": "advanced",
            "warn": True,
            "off_flag": "enable_certificate_validation",
        },
    )
    connect_timeout: float = common_fields.connect_timeout("seconds to connect and get the greeting")
    command_timeout: float = common_fields.command_timeout()
    worker_pool: common_fields.PoolName = common_fields.worker_pool()

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        ascii_host(value, field="server")
        return value.strip().rstrip(".")

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        # Imported here: reading the settings model (the CLI's options) needs no TLS code.
        from mailwright.transport.tls import check_ca_file

        return check_ca_file(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.ca_file and self.disable_certificate_validation:
            raise ValidationError(
                "a CA file and disable_certificate_validation contradict each other",
                field="disable_certificate_validation",
                hint="keep the CA file and leave validation on",
            )
        self.check_port_security()
        return self

    def check_port_security(self) -> None:
        """Each type refuses the security modes its well-known ports cannot speak."""


def server_view(
    settings: ServerSettings,
    *,
    protocol: str,
    target_name: str,
    account_key: str | None,
    optional_tls: bool = False,
    middle: list[tuple[str, str]] | None = None,
    timeouts: str = "",
    last: list[tuple[str, str]] | None = None,
) -> TargetView:
    """The lines every server type shows: where, TLS, certificates, timeouts, and its warnings.

    `middle` comes after the certificates (EHLO name, polling interval), `last` after
    the timeouts (rate limits, the pool); `timeouts` adds to the connect and command ones.
    """
    security = settings.security.value
    warnings = []
    if settings.security is Security.NONE and account_key:
        warnings.append(
            f"THE LOGIN TRAVELS IN CLEAR TEXT: {target_name!r} has no TLS, so the password of account key "
            f"{account_key!r} crosses the network unencrypted (choose ssl or starttls)"
        )
    if settings.disable_certificate_validation:
        warnings.append(
            f"certificate validation is DISABLED for {target_name!r}; anyone on the network path can "
            "impersonate the server (give it a CA file instead: --ca-file)"
        )
    timing = f"connect {settings.connect_timeout:g} s, command {settings.command_timeout:g} s"
    return TargetView(
        address=f"{settings.server}:{settings.port}",
        security=security,
        connection=[
            (f"{protocol} Server", settings.server),
            (f"{protocol} Port", str(settings.port)),
            ("Protocol", protocol),
            ("Security", security + (" (optional)" if optional_tls else "")),
        ],
        details=[
            ("CA file", settings.ca_file or "(system trust store)"),
            (
                "Certificates",
                "NOT VALIDATED (unsafe)" if settings.disable_certificate_validation else "validated",
            ),
            *(middle or []),
            ("Timeouts", f"{timing}, {timeouts}" if timeouts else timing),
            *(last or []),
            common_fields.pool_row(settings.worker_pool),
        ],
        warnings=warnings,
        flags=["certificates not validated"] if settings.disable_certificate_validation else [],
    )
