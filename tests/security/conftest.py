"""The probes reuse the integration fixtures: a Mailwright home, its API, its CLI and its web UI."""

from __future__ import annotations

from tests.integration.conftest import api, cli, mw, targets
from tests.integration.test_web_targets import web

__all__ = ["api", "cli", "mw", "targets", "web"]
