"""Email Credentials: a mailbox username and password (often an app password)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailwright.plugins import AccountKeyType, KeyMaterial, register_account_key_type
from mailwright.secrets import Secret
from mailwright.transport.base import Login


class EmailCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(
        min_length=1,
        max_length=320,
        description="mailbox username",
        json_schema_extra={"label": "Mailbox Username"},
    )
    password: Secret = Field(
        description="mailbox password or app password (write-only)",
        json_schema_extra={"label": "Mailbox Password", "secret": True, "minLength": 1},
    )
    sender: str | None = Field(
        default=None, description="default From address", json_schema_extra={"label": "Sender address"}
    )

    @field_validator("username")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        from mailwright.domain.addresses import parse_address

        if value is None or not value.strip():
            return None
        return str(parse_address(value, field="sender"))


def _login(material: KeyMaterial) -> Login:
    return Login(
        key_name=material.name,
        username=str(material.settings.get("username", "")),
        password=material.secrets.get("password", Secret("")),
    )


def _username(settings: dict[str, Any]) -> str:
    return str(settings.get("username") or "")


EMAIL_CREDENTIALS = register_account_key_type(
    AccountKeyType(
        name="email_credentials",
        label="Email Credentials",
        fields_model=EmailCredentials,
        login=_login,
        username=_username,
        aliases=("email", "password", "email-credentials"),
        prompt_secret="password",
        description="a mailbox username and password (or an app password)",
    )
)
