"""Finding 11: the secret key can be rotated, and kept outside the home folder.

`mailwright secret-key rotate` re-encrypts every stored secret under a new key in one
transaction; the old key stays in the key file until that transaction has committed, so
a failure half-way leaves everything readable. MAILWRIGHT_SECRET_KEY_FILE keeps the key
apart from the database (one backup of the home folder should not hold both).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwright.cli.secret_key import rotate_secret_key
from mailwright.config import Settings
from mailwright.errors import ConfigError, SecretError
from mailwright.secrets import SecretBox, generate_key, load_key_file
from mailwright.services.app import Services
from tests.integration.conftest import Targets
from tests.support.cli import CLI, assert_ok
from tests.support.smtpserver import SMTPServerFactory
from tests.support.tlsfiles import TLSFiles

PASSWORDS = {"alice": "Alice-App-Pa55word", "bob": "B0b-App-Pa55word", "carol": "Car0l-App-Pa55word"}


def _key_id(text: str) -> str:
    return SecretBox.from_texts([text]).current_key_id


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(home: Path) -> Iterator[CLI]:
    runner = CLI(home)
    yield runner
    runner.close()
    runner.assert_no_traceback()


def _keys(svc: Services, tls_files: TLSFiles) -> Targets:
    targets = Targets(svc, tls_files)
    for name, password in PASSWORDS.items():
        targets.key(name, username=f"{name}@example.org", password=password)
    return targets


def _logins(settings: Settings) -> dict[str, str]:
    """Each key's password, decrypted by a fresh process's view of the data."""
    svc = Services(settings)
    try:
        return {name: svc.account_keys.login(name).password.reveal() for name in PASSWORDS}
    finally:
        svc.close()


def test_rotate_with_real_account_keys_then_send_and_test_still_decrypt(
    home: Path, cli: CLI, smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    users = {f"{name}@example.org": password for name, password in PASSWORDS.items()}
    server = smtp_server_factory(tls="starttls", users=users)
    svc = Services(Settings(home=home))
    target = _keys(svc, tls_files).target(server, security="starttls", key="alice", display_name="relay")
    svc.close()
    old_key = load_key_file(home / "secret.key")[0]

    rotated = assert_ok(cli("secret-key", "rotate", "--json")).json()

    new_keys = load_key_file(home / "secret.key")
    assert len(new_keys) == 1 and new_keys[0] != old_key
    assert rotated["key_id"] == _key_id(new_keys[0])
    assert rotated["replaced"] == [_key_id(old_key)] and rotated["secrets"] == 3
    assert stat.S_IMODE((home / "secret.key").stat().st_mode) == 0o600
    svc = Services(Settings(home=home))
    try:
        assert svc.account_keys.key_ids_in_use() == {rotated["key_id"]: 3}
    finally:
        svc.close()
    # The old key alone no longer decrypts anything; the new file decrypts everything.
    assert _logins(Settings(home=home)) == PASSWORDS
    with pytest.raises(SecretError, match="not configured"):
        _logins(Settings(home=home, secret_key=old_key))

    assert_ok(cli("targets", "test", target.display_name))
    assert_ok(
        cli(
            "send", "--target", "relay", "--from", "alice@example.org", "--to", "x@example.net",
            "--subject", "after rotation", "--body", "hi",
        )
    )  # fmt: skip
    (received,) = server.wait_for(1)
    assert received.auth_login == "alice@example.org"


def test_a_failure_half_way_leaves_every_secret_readable(
    home: Path, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = Services(Settings(home=home))
    _keys(svc, tls_files)
    old_key = load_key_file(home / "secret.key")[0]
    calls = 0
    encrypt = SecretBox.encrypt

    def crash_on_second(self: SecretBox, plaintext: str, *, context: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("power cut")
        return encrypt(self, plaintext, context=context)

    monkeypatch.setattr(SecretBox, "encrypt", crash_on_second)
    with pytest.raises(RuntimeError, match="power cut"):
        rotate_secret_key(svc)
    monkeypatch.undo()
    svc.close()

    ring = load_key_file(home / "secret.key")
    assert len(ring) == 2 and ring[1] == old_key  # the new key first, the old one still there
    assert _logins(Settings(home=home)) == PASSWORDS  # the transaction rolled back: all under the old key
    svc = Services(Settings(home=home))
    try:
        assert svc.account_keys.key_ids_in_use() == {_key_id(old_key): 3}
        done = rotate_secret_key(svc)  # running it again finishes the job
        assert done.secrets == 3 and svc.account_keys.key_ids_in_use() == {done.key_id: 3}
    finally:
        svc.close()
    assert len(load_key_file(home / "secret.key")) == 1
    assert _logins(Settings(home=home)) == PASSWORDS


def test_a_running_server_takes_up_the_rotated_key_file(home: Path, tls_files: TLSFiles) -> None:
    running = Services(Settings(home=home))  # a server's services, open across the rotation
    _keys(running, tls_files)
    rotating = Services(Settings(home=home))
    try:
        done = rotate_secret_key(rotating)
        assert running.account_keys.login("bob").password.reveal() == PASSWORDS["bob"]
        assert running.account_keys.box.current_key_id == done.key_id  # new secrets use the new key
    finally:
        rotating.close()
        running.close()


def test_rotation_with_keys_from_the_environment(home: Path, tls_files: TLSFiles) -> None:
    old, new = generate_key(), generate_key()
    svc = Services(Settings(home=home, secret_key=old))
    _keys(svc, tls_files)
    svc.close()
    svc = Services(Settings(home=home, secret_key=old))
    try:
        with pytest.raises(ConfigError, match="holds one key") as refused:
            rotate_secret_key(svc)
    finally:
        svc.close()
    assert "secret-key generate" in str(refused.value.hint)
    svc = Services(Settings(home=home, secret_key=f"{new},{old}"))
    try:
        done = rotate_secret_key(svc)
    finally:
        svc.close()
    assert done.key_id == _key_id(new) and done.replaced == [_key_id(old)] and done.secrets == 3
    assert _logins(Settings(home=home, secret_key=new)) == PASSWORDS  # the old key can go


def test_key_file_outside_the_home_folder(home: Path, tmp_path: Path, cli: CLI) -> None:
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    key_file = vault / "mailwright.key"
    key_file.write_text(generate_key() + "\n")
    key_file.chmod(0o600)
    env = {"MAILWRIGHT_SECRET_KEY_FILE": str(key_file)}
    assert_ok(
        cli(
            "account-keys", "create", "--name", "alice", "--username", "a@example.org", "--password-stdin",
            input=PASSWORDS["alice"], env=env,
        )
    )  # fmt: skip
    assert not (home / "secret.key").exists()  # a backup of the home folder holds no key
    rotated = assert_ok(cli("secret-key", "rotate", "--json", env=env)).json()
    assert rotated["key_file"] == str(key_file)
    settings = Settings(home=home, secret_key_file=key_file)
    svc = Services(settings)
    try:
        assert svc.account_keys.login("alice").password.reveal() == PASSWORDS["alice"]
    finally:
        svc.close()


def test_missing_key_file_is_a_clear_error_with_the_fix(home: Path, tmp_path: Path, cli: CLI) -> None:
    missing = tmp_path / "nowhere" / "mailwright.key"
    result = cli("account-keys", "list", env={"MAILWRIGHT_SECRET_KEY_FILE": str(missing)})
    assert result.returncode != 0
    expected = f"error: the secret key file {missing} (MAILWRIGHT_SECRET_KEY_FILE) does not exist"
    assert expected in result.stderr
    assert "hint:" in result.stderr and "key backup" in result.stderr
    assert "secret-key generate" in result.stderr
    assert not missing.exists()  # never created: a typo must not make a new key


def test_wrong_key_file_is_a_clear_error_with_the_fix(home: Path, tmp_path: Path, cli: CLI) -> None:
    assert_ok(
        cli(
            "account-keys", "create", "--name", "alice", "--username", "a@example.org", "--password-stdin",
            input=PASSWORDS["alice"],
        )
    )  # fmt: skip
    right = _key_id(load_key_file(home / "secret.key")[0])
    wrong_file = tmp_path / "wrong.key"
    wrong = generate_key()
    wrong_file.write_text(wrong + "\n")
    wrong_file.chmod(0o600)
    result = cli("secret-key", "rotate", env={"MAILWRIGHT_SECRET_KEY_FILE": str(wrong_file)})
    assert result.returncode != 0
    assert f"encrypted with key {right}, which is not configured" in result.stderr
    assert f"the key file {wrong_file}" in result.stderr and _key_id(wrong) in result.stderr
    assert "MAILWRIGHT_SECRET_KEY_FILE" in result.stderr.split("hint:", 1)[1]
    # The transaction rolled back: with the right key file everything still decrypts.
    assert load_key_file(wrong_file)[-1] == wrong
    svc = Services(Settings(home=home))
    try:
        assert svc.account_keys.login("alice").password.reveal() == PASSWORDS["alice"]
    finally:
        svc.close()
