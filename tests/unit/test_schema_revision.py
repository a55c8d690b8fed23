from __future__ import annotations

from importlib import resources

from alembic.config import Config
from alembic.script import ScriptDirectory

from mailwright.storage.db import SCHEMA_REVISION


def test_schema_revision_constant_is_alembic_head() -> None:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("mailwright.storage").joinpath("migrations"))
    )
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION
