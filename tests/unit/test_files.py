"""The file store of read attachments, and attaching a stored file to an outgoing message."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mailwright.domain.addresses import parse_address
from mailwright.errors import NotFoundError, ValidationError
from mailwright.services.sending import SendEmailRequest, build_outgoing
from mailwright.storage.files import FileStore, is_file_ref


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
    with pytest.raises(NotFoundError, match="no stored file"):
        store.get("sha256:" + "0" * 64)
    ref = store.put(b"original")
    next(p for p in tmp_path.rglob("*") if p.is_file()).write_bytes(b"tampered")
    with pytest.raises(NotFoundError, match="damaged"):
        store.get(ref)


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
