"""OAuth2 (XOAUTH2): SMTP and IMAP logins with access tokens, for Google, Microsoft or any provider.

The key holds a client id (and secret), the provider's endpoints and scopes, and a
refresh token obtained once with `mailwright account-keys authorize NAME` (the
authorization-code flow with PKCE and a loopback redirect, or the device-code flow).
Presets fill the endpoints and scopes of Google and Microsoft.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailwright.errors import ValidationError
from mailwright.keys.trust import checked_ca_file, verify_for
from mailwright.plugins import AccountKeyType, KeyMaterial, register_account_key_type
from mailwright.secrets import Secret
from mailwright.transport.base import Login


class Provider(StrEnum):
    GOOGLE = "google"
    MICROSOFT = "microsoft"
    CUSTOM = "custom"


# The endpoints and scopes of the providers, as they document them ({tenant}: Microsoft's tenant).
PROVIDERS: dict[Provider, dict[str, str]] = {
    Provider.GOOGLE: {
        "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_endpoint": "https://oauth2.googleapis.com/token",
        "device_authorization_endpoint": "https://oauth2.googleapis.com/device/code",
        "scopes": "https://mail.google.com/",
    },
    Provider.MICROSOFT: {
        "authorization_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        "token_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "device_authorization_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        "scopes": "https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All "
        "offline_access",
    },
}


class OAuth2Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(
        min_length=1,
        max_length=320,
        description="the mailbox to log in as (XOAUTH2's user)",
        json_schema_extra={"label": "Mailbox Username"},
    )
    provider: Provider = Field(
        default=Provider.CUSTOM,
        description="google, microsoft, or custom",
        json_schema_extra={"label": "Provider"},
    )
    client_id: str = Field(
        min_length=1, max_length=500, description="OAuth2 client id", json_schema_extra={"label": "Client ID"}
    )
    client_secret: Secret | None = Field(
        default=None,
        description="OAuth2 client secret (write-only); none for a public client",
        json_schema_extra={"label": "Client secret", "secret": True},
    )
    tenant: str = Field(
        default="common",
        max_length=200,
        description="Microsoft: tenant id or domain",
        json_schema_extra={"label": "Tenant"},
    )
    token_endpoint: str | None = Field(
        default=None,
        description="token URL (the provider's by default)",
        json_schema_extra={"label": "Token endpoint"},
    )
    authorization_endpoint: str | None = Field(
        default=None,
        description="authorization URL (the provider's by default)",
        json_schema_extra={"label": "Authorization endpoint"},
    )
    device_authorization_endpoint: str | None = Field(
        default=None,
        description="device-code URL, where the provider offers one",
        json_schema_extra={"label": "Device-code endpoint"},
    )
    scopes: str | None = Field(
        default=None,
        description="space-separated scopes (the provider's by default)",
        json_schema_extra={"label": "Scopes"},
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of a CA to trust for the login endpoints (else the system store)",
        json_schema_extra={"label": "CA file (PEM path on the server)"},
    )
    sender: str | None = Field(
        default=None, description="default From address", json_schema_extra={"label": "Sender address"}
    )
    refresh_token: Secret | None = Field(
        default=None,
        description="refresh token (write-only); `mailwright account-keys authorize NAME` obtains one",
        json_schema_extra={"label": "Refresh token", "secret": True},
    )

    @field_validator("username", "client_id", "tenant")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("token_endpoint", "authorization_endpoint", "device_authorization_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("https://", "http://")):
            raise ValueError("an endpoint must be a URL starting with https://")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        return checked_ca_file(value)

    @model_validator(mode="after")
    def _endpoints(self) -> OAuth2Credentials:
        if self.provider == Provider.CUSTOM and not self.token_endpoint:
            raise ValueError(
                "a custom provider needs a token endpoint (token_endpoint; in the CLI --token-endpoint), "
                "or choose the provider google or microsoft"
            )
        return self


def endpoints(settings: dict[str, Any]) -> dict[str, str | None]:
    """The key's endpoints and scopes: its own where given, else its provider's."""
    preset = PROVIDERS.get(Provider(settings.get("provider") or Provider.CUSTOM), {})
    tenant = str(settings.get("tenant") or "common")
    out: dict[str, str | None] = {}
    for name in ("authorization_endpoint", "token_endpoint", "device_authorization_endpoint", "scopes"):
        value = settings.get(name) or preset.get(name)
        out[name] = str(value).replace("{tenant}", tenant) if value else None
    return out


def _login(material: KeyMaterial) -> Login:
    from mailwright.oauth.generic import refresh_tokens

    refresh = material.secrets.get("refresh_token")
    if not refresh:
        raise ValidationError(
            f"account key {material.name!r} has no refresh token yet",
            field="account_key",
            hint=f"authorize it once: mailwright account-keys authorize {material.name}",
        )
    where = endpoints(material.settings)
    tokens = refresh_tokens(
        material.name,
        str(where["token_endpoint"]),
        str(material.settings["client_id"]),
        material.secrets.get("client_secret"),
        str(where["scopes"] or "").split(),
        refresh,
        material.token_store,
        verify=verify_for(material.settings),
    )
    username = str(material.settings["username"])
    return Login(key_name=material.name, username=username, password=Secret(""), tokens=tokens)


async def _authorize(material: KeyMaterial, *, device: bool, show: Callable[[str], None]) -> dict[str, str]:
    """Run the consent flow once (it blocks: in a thread); the refresh token is stored encrypted.

    Microsoft's keys go through msal, the others through Authlib: the authorization code
    with PKCE and a loopback redirect, or the device code where the provider has one.
    """
    where = endpoints(material.settings)
    if device and not where["device_authorization_endpoint"]:
        raise ValidationError(
            f"account key {material.name!r} has no device-code endpoint",
            hint="give the key a device-code endpoint, or authorize in a browser (without --device-code)",
        )
    if not device and not where["authorization_endpoint"]:
        raise ValidationError(
            f"account key {material.name!r} has no authorization endpoint",
            hint="give the key an authorization endpoint, or choose the provider google or microsoft",
        )
    flow = _microsoft_flow if material.settings.get("provider") == Provider.MICROSOFT else _generic_flow
    grant = await asyncio.to_thread(flow, material, where, device=device, show=show)
    return {"refresh_token": grant.refresh_token.reveal()}


def _generic_flow(
    material: KeyMaterial, where: dict[str, str | None], *, device: bool, show: Callable[[str], None]
) -> Any:
    from mailwright.oauth import generic
    from mailwright.oauth.presets import GOOGLE

    client_id = str(material.settings["client_id"])
    secret = material.secrets.get("client_secret")
    scopes = str(where["scopes"] or "").split()
    if device:
        return generic.device_authorize(
            material.name, str(where["device_authorization_endpoint"]), str(where["token_endpoint"]),
            client_id, secret, scopes, show=show, verify=verify_for(material.settings),
        )  # fmt: skip
    google = material.settings.get("provider") == Provider.GOOGLE
    return generic.authorize(
        material.name, str(where["authorization_endpoint"]), str(where["token_endpoint"]), client_id, secret,
        scopes, show=show, extra_params=dict(GOOGLE.authorize_params) if google else None,
        verify=verify_for(material.settings),
    )  # fmt: skip


def _microsoft_flow(
    material: KeyMaterial, where: dict[str, str | None], *, device: bool, show: Callable[[str], None]
) -> Any:
    from mailwright.oauth import microsoft

    tenant = str(material.settings.get("tenant") or "common")
    client_id = str(material.settings["client_id"])
    scopes = [
        s for s in str(where["scopes"] or "").split() if s not in {"offline_access", "openid", "profile"}
    ]
    # The login URL is the authorization endpoint's origin (a national cloud, or a test stand-in).
    login_url = str(where["authorization_endpoint"] or where["token_endpoint"]).split(f"/{tenant}/")[0]
    if device:
        return microsoft.device_authorize_microsoft(
            material.name, tenant, client_id, scopes, login_url=login_url, show=show
        )
    return microsoft.authorize_microsoft(
        material.name, tenant, client_id, scopes, login_url=login_url, show=show
    )


OAUTH2 = register_account_key_type(
    AccountKeyType(
        name="oauth2",
        label="OAuth2 (XOAUTH2)",
        fields_model=OAuth2Credentials,
        login=_login,
        username=lambda settings: str(settings.get("username") or ""),
        aliases=("xoauth2", "oauth"),
        authorize=_authorize,
        description="SMTP and IMAP with OAuth2 access tokens (Google, Microsoft, or any provider)",
    )
)
