"""The quick read of the embedded database (services/listing.py) gives what the services give.

`mailwright targets list` reads the SQLite file with the standard library instead of
opening the services on SQLAlchemy; these tests hold the two paths to the same answer,
and check the cases where the quick path must step aside.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from mailwright.config import Settings
from mailwright.services import listing
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.integration.conftest import PASSWORD, Targets
from tests.support.smtpserver import SMTPServerFactory


def test_the_quick_list_is_the_services_list(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(users={"alice@example.org": PASSWORD})
    targets.key("alice")
    tested = targets.target(server, security="none", key="alice")
    asyncio.run(mw.targets.test(tested.display_name))  # a last test to show
    mw.targets.create(
        TargetCreate.model_validate(
            {"display_name": "Zed IMAP", "type": "imap", "server": "imap.example.org",
             "no_account_keys": True, "description": "reads"}
        )
    )  # fmt: skip
    mw.targets.create(
        TargetCreate.model_validate(
            {"display_name": "a pop3 box", "type": "pop3", "server": "pop.example.org", "port": 995,
             "account_key": "alice"}
        )
    )  # fmt: skip
    quick = listing.targets(mw.settings)
    assert quick is not None
    assert [t.model_dump() for t in quick] == [t.model_dump() for t in mw.targets.list_all()]
    assert any(t.last_test is not None for t in quick)  # the tested one shows its test
    assert [t.view() for t in quick] == [t.view() for t in mw.targets.list_all()]


def test_the_quick_list_steps_aside_for_an_older_schema(mw: Services, targets: Targets) -> None:
    path = mw.settings.home / "mailwright.db"
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0001'")
    assert listing.targets(mw.settings) is None  # the services migrate first


def test_the_quick_list_steps_aside_without_a_database_or_for_another_one(tmp_path: Path) -> None:
    assert listing.targets(Settings(home=tmp_path / "new")) is None
    assert (
        listing.targets(Settings(home=tmp_path, database_url="postgresql+psycopg://u@127.0.0.1/db")) is None
    )
