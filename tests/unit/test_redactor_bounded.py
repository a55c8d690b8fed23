"""The log redactor remembers a bounded number of secrets: refreshed OAuth2 tokens do not grow it forever."""

from __future__ import annotations

from mailwright.secrets import MASK, _Redactor


def test_the_newest_secrets_are_kept_and_the_oldest_forgotten() -> None:
    redactor = _Redactor()
    redactor.KEPT = 3
    for n in range(5):
        redactor.register(f"token-number-{n}")
    text = " ".join(f"token-number-{n}" for n in range(5))
    assert redactor.redact(text).split() == ["token-number-0", "token-number-1", MASK, MASK, MASK]


def test_a_secret_revealed_again_moves_to_the_front() -> None:
    redactor = _Redactor()
    redactor.KEPT = 2
    redactor.register("the-password")
    redactor.register("token-a-1234")
    redactor.register("the-password")  # used again
    redactor.register("token-b-5678")  # pushes out token-a, not the password
    assert redactor.redact("the-password token-a-1234 token-b-5678") == f"{MASK} token-a-1234 {MASK}"
