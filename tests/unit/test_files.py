"""The file store of read attachments, and attaching a stored file to an outgoing message."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from mailwright.domain.addresses import parse_address
from mailwright.errors import NotFoundError, ValidationError
from mailwright.services.sending import SendEmailRequest, build_outgoing
from mailwright.storage.files import STALE_INCOMING_SECONDS, FileStore, is_file_ref


def test_files_are_stored_once_by_content_and_read_back(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    ref = store.put(b"%PDF-1.7 invoice")
    assert is_file_ref(ref) and store.put(b"%PDF-1.7 invoice") == ref
    assert store.get(ref) == b"%PDF-1.7 invoice"
    (stored,) = [p for p in (tmp_path / "files").rglob("*") if p.is_file()]
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600  # mkstemp: the service's user only


def test_bad_unknown_and_damaged_references_are_explained(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(ValidationError, match="is not a file reference"):
        store.get("invoice.pdf")
    with pytest.raises(NotFoundError, match="no longer stored; it may have been pruned") as missing:
        store.get("sha256:" + "0" * 64)
    assert missing.value.hint is not None and "read the mail again" in missing.value.hint
    ref = store.put(b"original")
    next(p for p in tmp_path.rglob("*") if p.is_file()).write_bytes(b"tampered")
    with pytest.raises(NotFoundError, match="damaged"):
        store.get(ref)


def age(path: Path, seconds: float) -> float:
    """Set the modified time of `path` to `seconds` ago; returns that time."""
    when = time.time() - seconds
    os.utime(path, (when, when))
    return when


def stored_path(store: FileStore, ref: str) -> Path:
    digest = ref.removeprefix("sha256:")
    return store.root / digest[:2] / digest


def test_iterating_lists_every_file_with_its_size_and_modified_time(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    assert list(store.iter_files()) == []  # nothing stored yet: no directory, no error
    small, large = store.put(b"a"), store.put(b"b" * 5000)
    when = age(stored_path(store, large), 86400)
    listed = {f.ref: f for f in store.iter_files()}
    assert set(listed) == {small, large}
    assert listed[small].size == 1 and listed[large].size == 5000
    assert listed[large].modified == pytest.approx(when)
    assert listed[small].modified > time.time() - 60
    (tmp_path / "files" / "README").write_text("not a stored file")  # stray files are not listed
    (tmp_path / "files" / small[7:9] / "notes.txt").write_text("nor this")
    assert {f.ref for f in store.iter_files()} == {small, large}


def test_iterating_skips_temporaries_and_removes_those_left_by_a_crash(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    ref = store.put(b"complete")
    shard = stored_path(store, ref).parent
    writing = shard / ".incoming-fresh"  # another process is writing it right now
    writing.write_bytes(b"half")
    crashed = shard / ".incoming-crashed"
    crashed.write_bytes(b"half, forever")
    age(crashed, STALE_INCOMING_SECONDS + 60)
    assert [f.ref for f in store.iter_files()] == [ref]
    assert writing.exists() and not crashed.exists()


def test_deleting_a_reference(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    ref = store.put(b"to be removed")
    assert store.delete(ref) is True
    assert store.delete(ref) is False  # already gone
    assert list(store.iter_files()) == []
    with pytest.raises(NotFoundError, match="no longer stored"):
        store.get(ref)
    with pytest.raises(ValidationError, match="is not a file reference"):
        store.delete("../../etc/passwd")
    assert store.put(b"to be removed") == ref and store.get(ref) == b"to be removed"  # stored anew


def test_storing_again_refreshes_the_age_so_a_prune_in_progress_keeps_it(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    ref = store.put(b"invoice")
    age(stored_path(store, ref), 40 * 86400)
    cutoff = time.time() - 30 * 86400  # a prune decided it is old...
    assert store.put(b"invoice") == ref  # ...the same attachment is read again...
    assert store.delete(ref, modified_before=cutoff) is False  # ...and the file stays
    assert store.get(ref) == b"invoice"
    age(stored_path(store, ref), 40 * 86400)
    assert store.delete(ref, modified_before=cutoff) is True


def request(**attachment: str) -> SendEmailRequest:
    return SendEmailRequest.model_validate(
        {"target": "t", "to": ["bob@example.org"], "attachments": [{"file_name": "a.pdf", **attachment}]}
    )


def test_an_attachment_by_reference_carries_the_stored_bytes(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    ref = store.put(b"%PDF-1.7 stored")
    sender = parse_address("ops@example.org", field="from")
    message = build_outgoing(request(file=ref), sender, files=store)
    assert message.attachments[0].content == b"%PDF-1.7 stored"
    with pytest.raises(ValidationError, match=r"either content .* or file"):
        build_outgoing(request(file=ref, content="eA=="), sender, files=store)
    with pytest.raises(ValidationError, match=r"either content .* or file"):
        build_outgoing(request(), sender, files=store)
    with pytest.raises(ValidationError, match="only inside Mailwright's runs"):
        build_outgoing(request(file=ref), sender)
