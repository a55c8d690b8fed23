"""A target's resolution is kept between sends, and never outlives a change made by any process.

`TargetService.resolve` keeps what it read (settings, the decrypted login) and uses it
again while the target's and the key's `updated_at` are unchanged. Here a second
`Services` on the same home plays another process (the CLI changing a target while
`serve` sends): each change it makes must be seen by the first at its next resolve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwright.config import Settings
from mailwright.errors import NotFoundError
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate, AccountKeyUpdate
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate, TargetUpdate


@pytest.fixture
def other(tmp_path: Path, mw: Services) -> Iterator[Services]:
    """Another process's services on the same database."""
    services = Services(Settings(home=tmp_path / "home"))
    yield services
    services.close()


def _relay(mw: Services, name: str = "Relay", *, key: str | None = None) -> None:
    mw.targets.create(
        TargetCreate(
            display_name=name,
            server="127.0.0.1",
            port=2525,
            security="none",
            account_key=key,
            no_account_keys=key is None,
        )
    )


def _key(mw: Services, name: str, password: str) -> None:
    mw.account_keys.create(
        AccountKeyCreate(name=name, username=f"{name}@example.org", password=Secret(password))
    )


def test_a_kept_resolution_is_the_same_object_until_something_changes(mw: Services) -> None:
    _relay(mw)
    first = mw.targets.resolve("Relay")
    assert mw.targets.resolve("relay") is not first  # another ref is resolved on its own
    assert mw.targets.resolve("Relay") is first


def test_settings_changed_elsewhere_are_seen(mw: Services, other: Services) -> None:
    _relay(mw)
    assert mw.targets.resolve("Relay").target.port == 2525
    other.targets.update("Relay", TargetUpdate(port=2526))
    assert mw.targets.resolve("Relay").target.port == 2526


def test_a_new_password_elsewhere_is_used(mw: Services, other: Services) -> None:
    _key(mw, "alice", "first-password")
    _relay(mw, key="alice")
    login = mw.targets.resolve("Relay").login
    assert login is not None and login.password.reveal() == "first-password"
    other.account_keys.update("alice", AccountKeyUpdate(password=Secret("second-password")))
    login = mw.targets.resolve("Relay").login
    assert login is not None and login.password.reveal() == "second-password"


def test_an_override_key_changed_or_deleted_elsewhere(mw: Services, other: Services) -> None:
    _key(mw, "alice", "alice-password")
    _key(mw, "bob", "bob-password")
    _relay(mw, key="alice")
    login = mw.targets.resolve("Relay", account_key="bob").login
    assert login is not None and login.username == "bob@example.org"
    other.account_keys.update("bob", AccountKeyUpdate(username="robert@example.org"))
    login = mw.targets.resolve("Relay", account_key="bob").login
    assert login is not None and login.username == "robert@example.org"
    other.account_keys.delete("bob")
    with pytest.raises(NotFoundError, match="bob"):
        mw.targets.resolve("Relay", account_key="bob")


def test_a_deleted_target_is_not_found(mw: Services, other: Services) -> None:
    _relay(mw)
    mw.targets.resolve("Relay")
    other.targets.delete("Relay")
    with pytest.raises(NotFoundError, match="Relay"):
        mw.targets.resolve("Relay")


def test_a_name_passed_to_another_target_resolves_to_that_target(mw: Services, other: Services) -> None:
    _relay(mw, "Relay")
    _relay(mw, "Spare")
    first = mw.targets.resolve("Relay").target.id
    other.targets.update("Relay", TargetUpdate(display_name="Old relay"))
    other.targets.update("Spare", TargetUpdate(display_name="Relay"))
    again = mw.targets.resolve("Relay").target
    assert again.id != first and again.display_name == "Relay"
