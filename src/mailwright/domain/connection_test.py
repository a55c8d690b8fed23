"""The connection test's report, one shape for every target type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ConnectionTestStep:
    name: str
    ok: bool
    ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "ms": self.ms}


@dataclass(slots=True)
class ConnectionTestReport:
    """What `targets test` shows: each step, the server's capabilities, TLS, and a diagnosis."""

    ok: bool
    target: str
    protocol: str
    server: str
    port: int
    security: str
    account_key: str | None
    steps: list[ConnectionTestStep] = field(default_factory=list)
    greeting: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] | None = None
    authenticated_as: str | None = None
    auth_mechanism: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    total_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "server": self.server,
            "port": self.port,
            "security": self.security,
            "protocol": self.protocol,
            "account_key": self.account_key,
            "steps": [s.as_dict() for s in self.steps],
            "greeting": self.greeting,
            "capabilities": self.capabilities,
            "tls": self.tls,
            "authenticated_as": self.authenticated_as,
            "auth_mechanism": self.auth_mechanism,
            "warnings": self.warnings,
            "error": self.error,
            "total_ms": self.total_ms,
        }

    @property
    def summary(self) -> str:
        if self.ok:
            return f"OK in {self.total_ms:.0f} ms"
        assert self.error is not None
        return str(self.error.get("message", "failed"))


def report_from(data: dict[str, Any], *, protocol: str, server: str) -> ConnectionTestReport:
    """The transport's report dictionary as the shared report type."""
    return ConnectionTestReport(
        ok=bool(data["ok"]),
        target=str(data["target"]),
        protocol=protocol,
        server=server,
        port=int(data["port"]),
        security=str(data["security"]),
        account_key=data.get("account_key"),
        steps=[ConnectionTestStep(name=s["name"], ok=s["ok"], ms=s["ms"]) for s in data.get("steps", [])],
        greeting=str(data.get("greeting") or ""),
        capabilities=dict(data.get("capabilities") or {}),
        tls=data.get("tls"),
        authenticated_as=data.get("authenticated_as"),
        auth_mechanism=data.get("auth_mechanism"),
        warnings=list(data.get("warnings") or []),
        error=data.get("error"),
        total_ms=float(data.get("total_ms") or 0.0),
    )
