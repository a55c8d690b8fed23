from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import stat
from pathlib import Path

import pytest
from pydantic import BaseModel

from mailwright.errors import ConfigError, SecretError
from mailwright.secrets import MASK, RedactingFilter, Secret, SecretBox, generate_key, load_key_file, redact


def test_secret_never_prints() -> None:
    secret = Secret("hunter2-very-secret")
    for shown in (str(secret), repr(secret), f"{secret}", f"{secret!r}", "%s" % secret, str([secret])):
        assert "hunter2" not in shown
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_secret_in_models_serialises_masked() -> None:
    class Model(BaseModel):
        password: Secret

    model = Model.model_validate({"password": "hunter2-very-secret"})
    assert model.password.reveal() == "hunter2-very-secret"
    assert "hunter2" not in model.model_dump_json()
    assert json.loads(model.model_dump_json())["password"] == MASK
    assert "hunter2" not in repr(model)


def test_encrypt_decrypt_round_trip_and_binding() -> None:
    box = SecretBox.from_texts([generate_key()])
    stored = box.encrypt("app-password", context="account-key:1:password")
    assert "app-password" not in stored
    assert stored.startswith(f"mw1:{box.current_key_id}:")
    assert box.decrypt(stored, context="account-key:1:password").reveal() == "app-password"
    with pytest.raises(SecretError, match="copied from another record"):
        box.decrypt(stored, context="account-key:2:password")


def test_rotation_old_keys_still_decrypt() -> None:
    old, new = generate_key(), generate_key()
    stored = SecretBox.from_texts([old]).encrypt("pw", context="c")
    rotated = SecretBox.from_texts([new, old])
    assert rotated.decrypt(stored, context="c").reveal() == "pw"
    assert rotated.encrypt("pw", context="c").split(":")[1] == rotated.current_key_id
    with pytest.raises(SecretError, match="not configured"):
        SecretBox.from_texts([new]).decrypt(stored, context="c")


def test_bad_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        SecretBox.from_texts(["c2hvcnQ="])
    with pytest.raises(ConfigError):
        SecretBox.from_texts(["!!!not base64!!!"])


def test_key_file_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    first = load_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == first


@pytest.mark.parametrize("user", ["a", "ab", "abc", "alice@example.org"])
def test_redaction_covers_plain_and_base64_auth_lines(user: str) -> None:
    password = "Sup3r-Secret-Pa55"
    Secret(password).reveal()
    plain = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    login = base64.b64encode(password.encode()).decode()
    text = f"AUTH PLAIN {plain} then {login} and {password}!"
    cleaned = redact(text)
    assert password not in cleaned
    assert plain not in cleaned and login not in cleaned
    assert cleaned.startswith("AUTH PLAIN ********")


def test_logging_filter_scrubs_messages_and_arguments(caplog: pytest.LogCaptureFixture) -> None:
    password = "Another-Secret-123"
    Secret(password).reveal()
    logger = logging.getLogger("mailwright.test.redaction")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="mailwright.test.redaction"):
        logger.info("login with %s", password)
    assert password not in caplog.text
    assert MASK in caplog.text


def test_logged_tracebacks_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    password = "Traceback-Secret-456"
    Secret(password).reveal()
    logger = logging.getLogger("mailwright.test.tracebacks")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        raise RuntimeError(f"login failed for {password}")
    except RuntimeError:
        logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    assert password not in stream.getvalue()
    assert "RuntimeError" in stream.getvalue()
