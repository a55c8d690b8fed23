"""Provider data: Google's and Microsoft's OAuth2 endpoints and scopes, Microsoft's national clouds.

Data only (no I/O), so the account-key types, the CLI and the web form can show it cheaply.
Sources: Google's "OAuth 2.0 for TV and Limited-Input Device Applications" and "OAuth 2.0
for Mobile & Desktop Apps" pages and its Gmail IMAP/SMTP scope (https://mail.google.com/);
Microsoft's "Authenticate an IMAP, POP or SMTP connection using OAuth" and "National cloud
deployments" pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

CloudName = Literal["global", "usgov", "usgov-dod", "china"]


class Cloud(StrEnum):
    """Microsoft's national clouds, as a Graph target and a Graph key name them."""

    GLOBAL = "global"
    USGOV = "usgov"
    USGOV_DOD = "usgov-dod"
    CHINA = "china"


@dataclass(frozen=True, slots=True)
class MicrosoftCloud:
    """One Microsoft cloud: where to log in and where Graph answers."""

    name: str
    label: str
    login_url: str
    graph_url: str


MICROSOFT_CLOUDS: dict[str, MicrosoftCloud] = {
    "global": MicrosoftCloud(
        "global", "Global", "https://login.microsoftonline.com", "https://graph.microsoft.com"
    ),
    "usgov": MicrosoftCloud(
        "usgov", "US Government L4", "https://login.microsoftonline.us", "https://graph.microsoft.us"
    ),
    "usgov-dod": MicrosoftCloud(
        "usgov-dod",
        "US Government L5 (DoD)",
        "https://login.microsoftonline.us",
        "https://dod-graph.microsoft.us",
    ),
    "china": MicrosoftCloud(
        "china",
        "China (21Vianet)",
        "https://login.chinacloudapi.cn",
        "https://microsoftgraph.chinacloudapi.cn",
    ),
}


def microsoft_cloud(name: str) -> MicrosoftCloud:
    """The cloud of this name; a ValueError names the choices."""
    try:
        return MICROSOFT_CLOUDS[name]
    except KeyError:
        raise ValueError(f"unknown cloud {name!r}: choose one of {', '.join(MICROSOFT_CLOUDS)}") from None


def graph_scopes(graph_url: str) -> list[str]:
    """The client-credentials scope: every application permission granted to the app on Graph."""
    return [f"{graph_url.rstrip('/')}/.default"]


@dataclass(frozen=True, slots=True)
class Provider:
    """An XOAUTH2 provider preset: endpoints, default scopes, and extra authorize parameters."""

    name: str
    label: str
    authorization_endpoint: str
    token_endpoint: str
    device_endpoint: str | None
    scopes: tuple[str, ...]
    authorize_params: dict[str, str] = field(default_factory=dict)


GOOGLE = Provider(
    name="google",
    label="Google (Gmail)",
    authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth",
    token_endpoint="https://oauth2.googleapis.com/token",
    # Google's device flow accepts only the short list of scopes for limited-input devices, which
    # leaves out the Gmail scope: authorize Gmail keys with the loopback redirect instead
    device_endpoint="https://oauth2.googleapis.com/device/code",
    scopes=("https://mail.google.com/",),
    # without these Google issues no refresh token (or only on the first consent)
    authorize_params={"access_type": "offline", "prompt": "consent"},
)

MICROSOFT_XOAUTH2_SCOPES: tuple[str, ...] = (
    "https://outlook.office.com/SMTP.Send",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "offline_access",
)


def microsoft(tenant: str = "common", login_url: str = MICROSOFT_CLOUDS["global"].login_url) -> Provider:
    """The Microsoft preset for a tenant ("common", "organizations", a GUID or a domain)."""
    base = f"{login_url.rstrip('/')}/{tenant}/oauth2/v2.0"
    return Provider(
        name="microsoft",
        label="Microsoft 365 (Outlook)",
        authorization_endpoint=f"{base}/authorize",
        token_endpoint=f"{base}/token",
        device_endpoint=f"{base}/devicecode",
        scopes=MICROSOFT_XOAUTH2_SCOPES,
    )


MICROSOFT = microsoft()

PROVIDERS: dict[str, Provider] = {"google": GOOGLE, "microsoft": MICROSOFT}


def provider(name: str) -> Provider:
    """The preset of this name; a ValueError names the choices."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}") from None


__all__ = [
    "GOOGLE",
    "MICROSOFT",
    "MICROSOFT_CLOUDS",
    "MICROSOFT_XOAUTH2_SCOPES",
    "PROVIDERS",
    "CloudName",
    "MicrosoftCloud",
    "Provider",
    "graph_scopes",
    "microsoft",
    "microsoft_cloud",
    "provider",
]
