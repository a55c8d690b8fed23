"""The services the commands use, opened once per invocation.

Imported by every command module, so it imports nothing heavy itself: the services
(SQLAlchemy, the migrations, the transports) load when a command first asks for them,
never for `--help` or `--version`.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailwright.services.app import Services


@cache
def services() -> Services:
    from mailwright.config import Settings
    from mailwright.services import audit
    from mailwright.services.app import Services

    # Changes made by this command are recorded in the audit log as this machine's user.
    audit.act_as(audit.Actor.local_user())
    return Services(Settings())
