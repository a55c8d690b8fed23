"""OAuth2 Microsoft Graph Credentials: an app registration's tenant, client id, and a secret or certificate.

The client-credentials flow (msal) against `{login_url}/{tenant}/oauth2/v2.0/token`, for
the scope `{graph resource}/.default`. The login URL follows the national cloud, and a
Graph target may override it (`TargetType.login_hints`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailwright.keys.trust import checked_ca_file, verify_for
from mailwright.oauth.presets import Cloud
from mailwright.plugins import AccountKeyType, KeyMaterial, register_account_key_type
from mailwright.secrets import Secret
from mailwright.transport.base import Login


class GraphCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(
        min_length=1,
        max_length=200,
        description="Directory (tenant) ID, or the tenant's domain",
        json_schema_extra={"label": "Tenant ID"},
    )
    client_id: str = Field(
        min_length=1,
        max_length=200,
        description="Application (client) ID",
        json_schema_extra={"label": "Client ID"},
    )
    client_secret: Secret | None = Field(
        default=None,
        description="client secret ('Secret Key'; write-only); or give a certificate",
        json_schema_extra={"label": "Secret Key", "secret": True},
    )
    certificate: Secret | None = Field(
        default=None,
        description="PEM with the private key and its certificate (write-only); or give a client secret",
        json_schema_extra={"label": "Certificate (PEM)", "secret": True, "file": True},
    )
    cloud: Cloud = Field(
        default=Cloud.GLOBAL,
        description="national cloud: global, usgov, usgov-dod, china",
        json_schema_extra={"label": "National cloud"},
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of a CA to trust for the login endpoints (else the system store)",
        json_schema_extra={"label": "CA file (PEM path on the server)"},
    )
    login_url: str | None = Field(
        default=None,
        description="login URL override (else the cloud's, e.g. https://login.microsoftonline.com)",
        json_schema_extra={"label": "Login URL"},
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

    @field_validator("certificate")
    @classmethod
    def _certificate(cls, value: Secret | None) -> Secret | None:
        if value:  # a PEM that holds no key, or a key without its certificate, is said now
            from mailwright.oauth.microsoft import load_certificate

            load_certificate(value)
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        return checked_ca_file(value)

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
    from mailwright.oauth.presets import microsoft_cloud

    explicit = hints.get("login_url") or settings.get("login_url")
    if explicit:
        return str(explicit).rstrip("/")
    return microsoft_cloud(str(hints.get("cloud") or settings.get("cloud") or Cloud.GLOBAL)).login_url


def _login(material: KeyMaterial) -> Login:
    from mailwright.oauth.microsoft import graph_tokens
    from mailwright.oauth.presets import microsoft_cloud

    settings, hints = material.settings, material.hints
    cloud = microsoft_cloud(str(hints.get("cloud") or settings.get("cloud") or Cloud.GLOBAL))
    tokens = graph_tokens(
        material.name,
        str(settings["tenant_id"]),
        str(settings["client_id"]),
        material.secrets.get("client_secret"),
        material.secrets.get("certificate"),
        login_url_of(settings, hints),
        None,  # {graph}/.default: the application permissions granted to the app
        material.token_store,
        graph_url=cloud.graph_url,  # the scope is the cloud's Graph, wherever a target points
        verify=verify_for(settings),
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
