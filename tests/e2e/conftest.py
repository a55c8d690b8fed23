"""End-to-end fixtures: a real Postfix + Dovecot stack (see tests/support/mailstack.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwright.config import Settings
from mailwright.services.app import Services
from tests.support.mailstack import MailStack, missing_binaries

_E2E_DIR = Path(__file__).resolve().parent

INSTALL_HINT = "run `bash scripts/install-system-deps.sh` (as root) to install them"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e carries the `e2e` marker."""
    for item in items:
        if Path(item.path).resolve().is_relative_to(_E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def mailstack() -> Iterator[MailStack]:
    """A started Postfix + Dovecot pair shared by the whole session."""
    missing = missing_binaries()
    if missing:
        # Never skip: CI must run these tests.
        pytest.fail(
            f"Postfix/Dovecot programs not found ({', '.join(missing)}); {INSTALL_HINT}",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the e2e mail stack must run as root (Postfix/Dovecot)", pytrace=False)
    stack = MailStack()
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def mw(tmp_path: Path) -> Iterator[Services]:
    """A Mailwright with its own data directory."""
    services = Services(Settings(home=tmp_path / "home"))
    yield services
    services.close()


# The web UI fixtures (a served app with the sandbox, Chromium per module, a page).
from tests.support.webapp import browser, page, web  # noqa: E402, F401
