"""`mailwright secret-key rotate`: every stored secret re-encrypted under a new key.

With a key file (``secret.key`` in the home folder, or ``MAILWRIGHT_SECRET_KEY_FILE``):

1. a new key is written to the file *before* the old ones (first encrypts, all decrypt);
2. every secret is decrypted and encrypted again under it, in one transaction;
3. only then are the old keys removed from the file.

A crash or error at any point leaves every secret readable: before (2) commits, all are
under an old key that the file still holds; after it, all are under the new one. Each
file write is atomic (a temporary file renamed over the old). Running servers and workers
notice the rewritten file and read it again.

With ``MAILWRIGHT_SECRET_KEY`` (keys given by the environment) the command cannot edit
the keys: the new key is put first by the user, the command re-encrypts under it, and
the user then drops the old keys from the variable.
"""

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from mailwright.cli.context import services
from mailwright.errors import ConfigError, SecretError

if TYPE_CHECKING:
    from mailwright.services.app import Services

_PASSES = 3  # re-encryption passes before giving up on secrets written concurrently


@dataclass(frozen=True)
class Rotation:
    """What a rotation did: the new key's id, the ids it replaced, the secrets re-encrypted."""

    key_id: str
    replaced: list[str]
    secrets: int
    key_file: str | None
    old_keys_kept: bool


def rotate_secret_key(svc: "Services", *, keep_old_keys: bool = False) -> Rotation:
    """Re-encrypt every stored secret under a new key (see the module's description)."""
    from mailwright.secrets import generate_key, load_key_file, write_key_file

    settings = svc.settings
    if settings.secret_key:
        return _rotate_environment(svc)
    path = settings.key_file
    old = load_key_file(path, create=False)
    new = generate_key()
    write_key_file(path, [new, *old])  # the old keys stay readable until the transaction commits
    new_id = _key_id(new)
    count = _reencrypt(svc, new_id)
    if not keep_old_keys:
        write_key_file(path, [new])
    return Rotation(
        key_id=new_id,
        replaced=[_key_id(k) for k in old],
        secrets=count,
        key_file=str(path),
        old_keys_kept=keep_old_keys,
    )


def _rotate_environment(svc: "Services") -> Rotation:
    ring = svc.account_keys.box.key_ids
    current = ring[0]
    if len(ring) == 1:
        in_use = svc.account_keys.key_ids_in_use()
        if set(in_use) <= {current}:
            raise ConfigError(
                "MAILWRIGHT_SECRET_KEY holds one key, and every secret is already encrypted with it",
                hint="put a new key first and keep the old one after it, then rotate: "
                "MAILWRIGHT_SECRET_KEY=$(mailwright secret-key generate),$MAILWRIGHT_SECRET_KEY "
                "mailwright secret-key rotate",
            )
    count = _reencrypt(svc, current)
    return Rotation(key_id=current, replaced=ring[1:], secrets=count, key_file=None, old_keys_kept=True)


def _reencrypt(svc: "Services", new_id: str) -> int:
    """Re-encrypt until no secret is under another key (a secret saved meanwhile is taken too)."""
    count = 0
    for _ in range(_PASSES):
        count = svc.account_keys.reencrypt_all()
        others = {kid: n for kid, n in svc.account_keys.key_ids_in_use().items() if kid != new_id}
        if not others:
            return count
    raise SecretError(
        f"after {_PASSES} passes, {sum(others.values())} secret(s) are still under other keys "
        f"({', '.join(sorted(others))})",
        hint="run `mailwright secret-key rotate` again; the key file still holds every key they need",
    )


def _key_id(text: str) -> str:
    from mailwright.secrets import SecretBox

    return SecretBox.from_texts([text]).current_key_id


def rotate(
    keep_old_keys: Annotated[
        bool,
        typer.Option("--keep-old-keys", help="leave the old keys in the key file, after the new one"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Re-encrypt every stored secret under a new key, in one transaction.

    The old key stays in the key file until the transaction has committed, so a crash
    leaves every secret readable. Back up the key file afterwards, apart from the home
    folder's backup.
    """
    done = rotate_secret_key(services(), keep_old_keys=keep_old_keys)
    if as_json:
        typer.echo(json.dumps(asdict(done), indent=2))
        return
    replaced = ", ".join(done.replaced) or "none"
    typer.echo(f"{done.secrets} secret(s) re-encrypted under key {done.key_id} (replacing {replaced}).")
    if done.key_file is None:
        typer.echo(
            "Now remove the old keys from MAILWRIGHT_SECRET_KEY, keeping only the first, "
            "and restart servers and workers."
        )
    elif done.old_keys_kept:
        typer.echo(f"The key file {done.key_file} holds the new key first and the old ones after it.")
    else:
        typer.echo(f"The key file {done.key_file} holds only the new key: back it up apart from the data.")
