"""Lists that a short command reads straight from the embedded database (no SQLAlchemy, no ORM).

`mailwright targets list` is run often and by scripts; the usual path (the services on
SQLAlchemy) spends most of its time importing and mapping. For the embedded SQLite
database at the current schema these lists read the file with the standard library
(storage/sqlite_file.py) and build the same public models; in every other case they
answer None and the caller opens the services as usual.
"""

from __future__ import annotations

from mailwright.config import Settings
from mailwright.services.target_public import TargetPublic, public_target
from mailwright.storage.sqlite_file import read_targets, sqlite_file


def targets(settings: Settings) -> list[TargetPublic] | None:
    """Every target as `TargetService.list_all` gives it, or None: use the services."""
    path = sqlite_file(settings.effective_database_url)
    if path is None:
        return None
    records = read_targets(path)
    if records is None:
        return None
    settings.secret_box()  # a wrong key is refused as when the services open, whatever the command
    return [public_target(r, account_key_name=r.account_key_name) for r in records]
