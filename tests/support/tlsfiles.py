"""Throw-away TLS material for tests, made with trustme.

``TLSFiles.create(directory)`` writes PEM files and returns their paths:

* ``ca_path``: the test CA; trust it to verify the server.
* ``cert_path`` / ``key_path``: server chain and key, valid for ``localhost``,
  ``127.0.0.1`` and ``::1``.
* ``other_ca_path``: an unrelated CA that issued nothing we serve
  ("certificate not trusted" tests).
* ``wrong_host_cert_path`` / ``wrong_host_key_path``: chain and key from the
  same CA, valid only for ``wrong.example`` (host-name mismatch tests).

Only paths are stored, so the object is cheap to copy and the files can be
handed to subprocesses (CLI tests).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trustme

SERVER_IDENTITIES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
WRONG_HOST: str = "wrong.example"


@dataclass(frozen=True)
class TLSFiles:
    ca_path: Path
    cert_path: Path
    key_path: Path
    other_ca_path: Path
    wrong_host_cert_path: Path
    wrong_host_key_path: Path

    @classmethod
    def create(cls, directory: Path) -> TLSFiles:
        """Issue fresh certificates and write them under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        other_ca = trustme.CA()
        server = ca.issue_cert(*SERVER_IDENTITIES)
        wrong_host = ca.issue_cert(WRONG_HOST)

        files = cls(
            ca_path=directory / "ca.pem",
            cert_path=directory / "server-chain.pem",
            key_path=directory / "server-key.pem",
            other_ca_path=directory / "other-ca.pem",
            wrong_host_cert_path=directory / "wrong-host-chain.pem",
            wrong_host_key_path=directory / "wrong-host-key.pem",
        )
        ca.cert_pem.write_to_path(files.ca_path)
        other_ca.cert_pem.write_to_path(files.other_ca_path)
        files.cert_path.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
        server.private_key_pem.write_to_path(files.key_path)
        files.wrong_host_cert_path.write_bytes(b"".join(pem.bytes() for pem in wrong_host.cert_chain_pems))
        wrong_host.private_key_pem.write_to_path(files.wrong_host_key_path)
        return files

    def server_context(self, cert: Literal["good", "wrong_host"] = "good") -> ssl.SSLContext:
        """A server-side context presenting the good (or the wrong-host) certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if cert == "good":
            ctx.load_cert_chain(self.cert_path, self.key_path)
        else:
            ctx.load_cert_chain(self.wrong_host_cert_path, self.wrong_host_key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context (hostname checked) that trusts only the test CA."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))

    def untrusting_client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only ``other_ca_path``."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.other_ca_path))
