"""The probes reuse the integration fixtures: a Mailwright home, its API and its CLI."""

from __future__ import annotations

from tests.integration.conftest import api, cli, mw, targets

__all__ = ["api", "cli", "mw", "targets"]
