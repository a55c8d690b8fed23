"""What every target type's settings share: the server, its port and TLS, timeouts."""

from __future__ import annotations

from typing import Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import Security
from mailwright.errors import ValidationError
from mailwright.transport.tls import check_ca_file


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    server: str = Field(description="host name, IDN or IP address of the server")
    port: int = Field(ge=1, le=65535)
    security: Security = Field(description="ssl = implicit TLS, starttls, or none")
    ca_file: str | None = Field(default=None, description="PEM CA file trusted for this target")
    disable_certificate_validation: bool = Field(
        default=False,
        validation_alias=AliasChoices("disable_certificate_validation", "ignore_certificate_errors"),
        description="accept any certificate (unsafe; reported loudly)",
    )
    connect_timeout: float = Field(default=10.0, gt=0, le=300, description="seconds")
    command_timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds")

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
