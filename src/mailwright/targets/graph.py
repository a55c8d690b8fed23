"""Microsoft Graph Endpoint targets: a Microsoft 365 mailbox reached over HTTPS with an OAuth2 token.

No server and port: a mailbox (user principal name or object id) and a national cloud,
which sets the Graph and login URLs (each may be overridden, for private clouds and
tests). The account key is an OAuth2 Microsoft Graph Credentials key: its token source
(`Login.tokens`) gives the bearer tokens, for the scope `token_scope()` names.

The transport (httpx) is imported inside the functions that use it: the CLI reads this
module to build its options.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailwright.domain.capabilities import FolderMailbox, RateLimits, SendReport
from mailwright.domain.connection_test import ConnectionTestReport, report_from
from mailwright.domain.hosts import ascii_host
from mailwright.domain.validation import validate_model
from mailwright.errors import ValidationError
from mailwright.oauth.presets import MICROSOFT_CLOUDS, Cloud, microsoft_cloud
from mailwright.plugins import Preset, TargetType, TargetView, register_target_type
from mailwright.targets import common_fields

if TYPE_CHECKING:
    from mailwright.transport.base import Login
    from mailwright.transport.graph.client import GraphEndpoint

PROTOCOL = "HTTPS"
LABEL = "Microsoft Graph Endpoint"


CLOUD_LABELS: dict[str, Any] = {name: cloud.label for name, cloud in MICROSOFT_CLOUDS.items()}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(value: str, *, field: str) -> str:
    """An https URL of a host (plain http only on this machine, for tests), without a trailing slash."""
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationError(
            f"{field}: {value!r} is not a URL like https://graph.microsoft.com", field=field
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError(f"{field}: give the base URL only, without a query or credentials", field=field)
    host = ascii_host(parts.hostname, field=field)
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValidationError(
            f"{field}: {value!r} is plain http; the bearer token must not cross the network unencrypted",
            field=field,
            hint="use https",
        )
    return text


class GraphSettings(BaseModel):
    """What a Microsoft Graph Endpoint target stores besides its name and account key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mailbox: str = Field(
        min_length=1,
        max_length=320,
        description="the mailbox to send from and read: user principal name or object id",
        json_schema_extra={
            "label": "Mailbox",
            "help": "User principal name (user@contoso.com) or object id of the Microsoft 365 mailbox.",
        },
    )
    cloud: Cloud = Field(
        default=Cloud.GLOBAL,
        description="national cloud: global, usgov, usgov-dod or china; sets the Graph and login URLs",
        json_schema_extra={"label": "National cloud", "choice_labels": CLOUD_LABELS},
    )
    graph_url: str | None = Field(
        default=None,
        description="Graph URL instead of the cloud's (e.g. https://graph.microsoft.com)",
        json_schema_extra={
            "label": "Graph URL",
            "help": "Overrides the national cloud's Graph URL; blank uses the cloud's.",
            "group": "advanced",
            "blank_clears": True,
        },
    )
    login_url: str | None = Field(
        default=None,
        description="login URL instead of the cloud's (e.g. https://login.microsoftonline.com)",
        json_schema_extra={
            "label": "Login URL",
            "help": "Overrides the national cloud's login (token) URL; blank uses the cloud's.",
            "group": "advanced",
            "blank_clears": True,
        },
    )
    save_to_sent_items: bool = Field(
        default=True,
        description="keep a copy of each message sent in the mailbox's Sent Items",
        json_schema_extra={
            "form_flag": "skip_sent_items",
            "flag_label": "Do not keep a copy of sent messages in Sent Items",
            "flag_help": "do not keep a copy of each message sent in the mailbox's Sent Items",
            "off_flag": "save_to_sent_items",
        },
    )
    polling_interval: float = common_fields.polling_interval("How often a mail trigger checks this mailbox.")
    connect_timeout: float = common_fields.connect_timeout()
    command_timeout: float = common_fields.command_timeout("seconds for each request")
    worker_pool: common_fields.PoolName = common_fields.worker_pool()

    @field_validator("mailbox")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        text = value.strip()
        if not text or "/" in text or any(ord(c) < 0x21 for c in text):
            raise ValueError("give the mailbox's user principal name (user@contoso.com) or object id")
        return text

    @field_validator("graph_url")
    @classmethod
    def _graph_url(cls, value: str | None) -> str | None:
        return check_base_url(value, field="graph_url") if value and value.strip() else None

    @field_validator("login_url")
    @classmethod
    def _login_url(cls, value: str | None) -> str | None:
        return check_base_url(value, field="login_url") if value and value.strip() else None

    @property
    def protocol(self) -> str:
        return PROTOCOL

    @property
    def graph_base(self) -> str:
        """The Graph URL calls go to: the override, else the national cloud's."""
        return self.graph_url or microsoft_cloud(self.cloud.value).graph_url

    @property
    def login_base(self) -> str:
        """The login URL tokens come from (`{login_base}/{tenant}/oauth2/v2.0/token`)."""
        return self.login_url or microsoft_cloud(self.cloud.value).login_url

    def token_scope(self) -> str:
        """The scope the key's client-credentials token is asked for: `{graph}/.default`.

        With a Graph URL override (a test stand-in) the scope stays the cloud's: the app
        registration's permissions are granted on Graph, not on the URL that serves it.
        """
        return f"{microsoft_cloud(self.cloud.value).graph_url}/.default"

    def endpoint(self, target_name: str) -> GraphEndpoint:
        from mailwright.transport.graph.client import GraphEndpoint

        return GraphEndpoint(
            target_name=target_name,
            graph_url=self.graph_base,
            mailbox=self.mailbox,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
        )


def settings_from_input(values: dict[str, Any], preset: Preset | None = None) -> GraphSettings:
    merged: dict[str, Any] = dict(preset.settings) if preset else {}
    merged.update({k: v for k, v in values.items() if v is not None})
    if "mailbox" not in merged:
        raise ValidationError(
            "the mailbox is required",
            field="mailbox",
            hint="give its user principal name (--mailbox user@contoso.com) or object id",
        )
    settings = validate_model(GraphSettings, merged)
    from mailwright.transport.outbound import outbound_policy

    for field, url in (("graph_url", settings.graph_url), ("login_url", settings.login_url)):
        if url:
            outbound_policy().check_literal(urlsplit(url).hostname or "", field=field)
    return settings


def _settings(settings: BaseModel) -> GraphSettings:
    assert isinstance(settings, GraphSettings)
    return settings


async def run_test(settings: BaseModel, *, target_name: str, login: Login | None) -> ConnectionTestReport:
    """The token, the mailbox, and each permission the target's use needs (transport/graph/report.py)."""
    from mailwright.transport.graph.report import connection_report

    graph = _settings(settings)
    data = await connection_report(graph.endpoint(target_name), login)
    return report_from(data, protocol=PROTOCOL, server=graph.graph_base)


def describe(settings: BaseModel, *, target_name: str, account_key: str | None) -> TargetView:
    graph = _settings(settings)
    host = urlsplit(graph.graph_base).hostname or graph.graph_base
    plain = urlsplit(graph.graph_base).scheme == "http"
    return TargetView(
        address=f"{graph.mailbox} @ {host}",
        security="http" if plain else "https",  # TLS is the URL's scheme
        connection=[
            ("Mailbox", graph.mailbox),
            ("Protocol", PROTOCOL),
            ("National cloud", CLOUD_LABELS[graph.cloud.value]),
            ("Graph URL", graph.graph_base + ("" if graph.graph_url else " (the cloud's)")),
            ("Login URL", graph.login_base + ("" if graph.login_url else " (the cloud's)")),
        ],
        details=[
            ("Sent Items", "a copy is kept" if graph.save_to_sent_items else "no copy kept"),
            ("Polling interval", f"{graph.polling_interval:g} s"),
            ("Timeouts", f"connect {graph.connect_timeout:g} s, request {graph.command_timeout:g} s"),
            common_fields.pool_row(graph.worker_pool),
        ],
        warnings=[]
        if account_key
        else [f"{target_name!r} has no account key: Microsoft Graph needs an OAuth2 Microsoft Graph key"],
        flags=["plain http (local)"] if plain else [],
    )


class GraphSender:
    """A `MailSender` through Graph's sendMail (transport/graph/send.py); one HTTPS client per message."""

    # Exchange Online serves at most 4 concurrent requests per app and mailbox.
    connections = 4
    closed = False

    def __init__(self, settings: GraphSettings, *, target_name: str, login: Login | None) -> None:
        self._settings = settings
        self._target_name = target_name
        self._login = login
        self.where = f"Microsoft Graph ({settings.mailbox})"
        self.rate_limits = RateLimits.of(settings)

    async def accepts_utf8(self) -> bool:
        return True  # Graph takes JSON: any address and header in Unicode

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
        from mailwright.transport.graph.send import send_message

        return await send_message(
            self._settings.endpoint(self._target_name),
            self._login,
            data=data,
            recipients=[address for address, _ in recipients],
            save_to_sent_items=self._settings.save_to_sent_items,
            before_data=before_data,
        )


def sender(settings: BaseModel, *, target_id: str, target_name: str, login: Login | None) -> GraphSender:
    return GraphSender(_settings(settings), target_name=target_name, login=login)


@asynccontextmanager
async def open_mailbox(
    settings: BaseModel, *, target_name: str, login: Login | None
) -> AsyncIterator[FolderMailbox]:
    """The mailbox through Graph (transport/graph/mailbox.py), with its token checked first."""
    from mailwright.transport.graph.mailbox import GraphMailbox

    async with GraphMailbox(_settings(settings).endpoint(target_name), login) as mailbox:
        await mailbox.open()
        yield mailbox


GRAPH_ENDPOINT = register_target_type(
    TargetType(
        name="graph",
        label=LABEL,
        protocol=PROTOCOL,
        settings_model=GraphSettings,
        account_key_types=("graph",),
        settings_from_input=lambda values, preset: settings_from_input(values, preset),
        run_test=run_test,
        describe=describe,
        sender=sender,
        mailbox=open_mailbox,
        mailbox_folders=True,
        poll_seconds=lambda settings: _settings(settings).polling_interval,
        form_defaults={"cloud": Cloud.GLOBAL.value},
        # The key logs in to the target's cloud; at the target's login URL when it names one,
        # else at the key's own, else at the cloud's.
        default_sender=lambda settings: (
            _settings(settings).mailbox if "@" in _settings(settings).mailbox else None
        ),
        login_hints=lambda settings: {
            "login_url": _settings(settings).login_url,
            "cloud": _settings(settings).cloud.value,
        },
    )
)
