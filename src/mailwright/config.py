"""One Settings object, read from MAILWRIGHT_* environment variables and validated at start."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailwright.domain.hosts import OutboundPolicy, parse_networks
from mailwright.errors import ConfigError
from mailwright.secrets import SecretBox

KEY_FILE_NAME = "secret.key"


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("mailwright", appauthor=False))


class Settings(BaseSettings):
    """Where Mailwright keeps its data and how it is reached."""

    model_config = SettingsConfigDict(env_prefix="MAILWRIGHT_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="data directory")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite in home")
    secret_key: str | None = Field(
        default=None, description="URL-safe base64 key(s), comma-separated; first one encrypts"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "INFO"
    sandbox: bool = Field(default=True, description="start the capture SMTP server with serve")
    sandbox_port: int = Field(default=2525, ge=0, le=65535, description="port of the capture SMTP server")
    broker: str = Field(
        default="embedded",
        description="task queue broker: embedded (in-process Taskiq) or amqp://user:pw@host:5672/vhost "
        "(Taskiq on RabbitMQ, for workers on many machines)",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:6379/0: rate limits and connection caps shared by all workers, and "
        "send-with-wait woken across processes (default: per process)",
    )
    worker_pool: str | None = Field(
        default=None,
        description="the pool a worker serves: only targets naming this pool (--worker-pool) are its "
        "(default: the targets that name no pool)",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="a worker serves its /metrics on this port"
    )
    worker_concurrency: int = Field(default=16, ge=1, le=1000, description="runs a worker executes at once")
    batch_range_size: int | None = Field(
        default=None,
        ge=10,
        le=1_000_000,
        description="messages per range of a batch: the share one worker takes at a time (default 1000)",
    )
    lease_seconds: float = Field(
        default=30.0, gt=0.5, le=3600, description="how long a worker holds a run without renewing it"
    )
    triggers: bool = Field(default=True, description="workers watch the mailboxes of email triggers")
    files_dir: Path | None = Field(
        default=None, description="where attachments read from mail are kept (default: HOME/files)"
    )
    files_keep_days: int | None = Field(
        default=None,
        ge=1,
        description="workers remove stored files older than this many days, unless an active run "
        "refers to them (default: keep forever)",
    )
    # Key handling: the key can live outside the home folder, so one backup holds not both.
    secret_key_file: Path | None = Field(
        default=None, description="file holding the secret key(s), one a line (default: HOME/secret.key)"
    )
    expression_time_limit: float = Field(
        default=2.0, gt=0, le=3600, description="seconds one rendering of a step's expressions may take"
    )
    # Bounded requests (api/limits.py). A 35 MiB message's attachments grow by 4/3 in base64
    # inside the JSON body (46.7 MiB); 48 MiB leaves 1.3 MiB for the other fields and bodies.
    max_request_bytes: int = Field(
        default=48 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above it)"
    )
    max_batch_request_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024,
        description="largest body of POST /api/v1/send-email/batch (413 above it)",
    )
    # Where browsers reach the service; https:// makes the cookies Secure, as does behind_https.
    public_url: str | None = Field(
        default=None, description="the URL browsers use, e.g. https://mail.example.org"
    )
    behind_https: bool = Field(default=False, description="an HTTPS proxy is in front: cookies are Secure")

    # The outbound policy (domain/hosts.py): CIDRs targets may not reach, and exceptions to them.
    target_deny: str | None = Field(
        default=None,
        description="comma-separated CIDRs targets may not connect to (default: link-local and "
        "cloud metadata addresses); an empty value denies nothing",
    )
    target_allow: str | None = Field(
        default=None, description="comma-separated CIDRs targets may reach even if target_deny lists them"
    )

    @field_validator("target_deny", "target_allow")
    @classmethod
    def _networks(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                parse_networks(value, setting=f"MAILWRIGHT_{str(info.field_name).upper()}")
            except ValueError as exc:
                raise ConfigError(str(exc), hint="fix the variable, or unset it for the default") from None
        return value

    def outbound_policy(self) -> OutboundPolicy:
        return OutboundPolicy.from_settings(self.target_deny, self.target_allow)

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'mailwright.db'}"

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.lower().startswith(("https://", "http://")):
            raise ValueError(
                "the URL browsers use must start with https:// (or http://), e.g. https://mail.example.org"
            )
        return value

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry `Secure` when browsers reach the service over HTTPS."""
        return self.behind_https or (self.public_url or "").lower().startswith("https://")

    def ensure_home(self) -> Path:
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the data directory {self.home}: {exc.strerror}",
                hint="set MAILWRIGHT_HOME to a writable directory",
            ) from exc
        return self.home

    @property
    def key_file(self) -> Path:
        """Where the key file is (used unless MAILWRIGHT_SECRET_KEY gives the keys themselves)."""
        return self.secret_key_file.expanduser() if self.secret_key_file else self.home / KEY_FILE_NAME

    def secret_box(self) -> SecretBox:
        if self.secret_key:
            return SecretBox.from_texts(self.secret_key.split(","), source="MAILWRIGHT_SECRET_KEY")
        if self.secret_key_file:  # never created here: a wrong path must not make a new key
            return SecretBox.from_key_file(self.key_file, create=False)
        self.ensure_home()
        return SecretBox.from_key_file(self.key_file, create=True)
