"""OAuth2 Microsoft Graph Credentials: an app registration's tenant, client id, and a secret or certificate.

The client-credentials flow (msal) against `{login_url}/{tenant}/oauth2/v2.0/token`, for
the scope `{graph resource}/.default`. The login URL follows the national cloud, and a
Graph target may override it (`TargetType.login_hints`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailwright.plugins import AccountKeyType, KeyMaterial, register_account_key_type
from mailwright.secrets import Secret
from mailwright.transport.base import Login


class Cloud(StrEnum):
    GLOBAL = "global"
    USGOV = "usgov"
    USGOV_DOD = "usgov-dod"
    CHINA = "china"


# (login URL, Graph URL) of each national cloud, as Microsoft documents them.
CLOUD_URLS: dict[Cloud, tuple[str, str]] = {
    Cloud.GLOBAL: ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    Cloud.USGOV: ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
    Cloud.USGOV_DOD: ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
    Cloud.CHINA: ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
}


class GraphCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(
        min_length=1, max_length=200, description="Directory (tenant) ID, or the tenant's domain"
    )
    client_id: str = Field(min_length=1, max_length=200, description="Application (client) ID")
    client_secret: Secret | None = Field(
        default=None,
        description="client secret ('Secret Key'; write-only); or give a certificate",
        json_schema_extra={"secret": True},
    )
    certificate: Secret | None = Field(
        default=None,
        description="PEM with the private key and its certificate (write-only); or give a client secret",
        json_schema_extra={"secret": True, "file": True},
    )
    cloud: Cloud = Field(default=Cloud.GLOBAL, description="national cloud: global, usgov, usgov-dod, china")
    login_url: str | None = Field(
        default=None,
        description="login URL override (else the cloud's, e.g. https://login.microsoftonline.com)",
    )

    @field_validator("tenant_id", "client_id")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("login_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("the login URL must start with https:// (http:// only for a local test server)")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> GraphCredentials:
        if not self.client_secret and not self.certificate:
            raise ValueError(
                "a Graph key needs a client secret or a certificate: give --client-secret-stdin, "
                "--client-secret-env VAR or --certificate FILE"
            )
        if self.client_secret and self.certificate:
            raise ValueError("give a client secret or a certificate, not both")
        return self


def login_url_of(settings: dict[str, Any], hints: dict[str, Any]) -> str:
    """The target's override first, then the key's, then the national cloud's."""
    explicit = hints.get("login_url") or settings.get("login_url")
    if explicit:
        return str(explicit).rstrip("/")
    cloud = Cloud(hints.get("cloud") or settings.get("cloud") or Cloud.GLOBAL)
    return CLOUD_URLS[cloud][0]


def _login(material: KeyMaterial) -> Login:
    from mailwright.oauth import graph_tokens

    settings, hints = material.settings, material.hints
    cloud = Cloud(hints.get("cloud") or settings.get("cloud") or Cloud.GLOBAL)
    resource = str(hints.get("resource") or CLOUD_URLS[cloud][1])
    tokens = graph_tokens(
        key_id=material.key_id,
        key_name=material.name,
        tenant_id=str(settings["tenant_id"]),
        client_id=str(settings["client_id"]),
        client_secret=material.secrets.get("client_secret"),
        certificate_pem=material.secrets.get("certificate"),
        login_url=login_url_of(settings, hints),
        scopes=[f"{resource.rstrip('/')}/.default"],
        store=material.token_store,
    )
    return Login(key_name=material.name, username="", password=Secret(""), tokens=tokens)


GRAPH = register_account_key_type(
    AccountKeyType(
        name="graph",
        label="OAuth2 Microsoft Graph Credentials",
        fields_model=GraphCredentials,
        login=_login,
        username=lambda settings: "",
        aliases=("msgraph", "microsoft_graph", "oauth2_microsoft_graph"),
        description="an Entra ID app registration: tenant, client id, and a client secret or certificate",
    )
)
