"""Shared pytest fixtures.

Sections: TLS material, in-process SMTP servers.  Add new fixtures in their own
section; keep heavy helpers in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Unpack

import pytest

from tests.support.smtpserver import SMTPServerFactory, SMTPServerOptions, SMTPTestServer
from tests.support.tlsfiles import TLSFiles

# --------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Test CA, server certificates and an unrelated CA, written once per session."""
    return TLSFiles.create(tmp_path_factory.mktemp("tls"))


# --------------------------------------------------------------------------------------
# In-process SMTP servers
# --------------------------------------------------------------------------------------


@pytest.fixture
def smtp_server_factory(tls_files: TLSFiles) -> Iterator[SMTPServerFactory]:
    """Build and start ``SMTPTestServer``s; all are stopped at teardown.

    ``tls_files`` is filled in from the session fixture when ``tls`` is not "none".
    """
    with ExitStack() as started:

        def factory(**options: Unpack[SMTPServerOptions]) -> SMTPTestServer:
            if options.get("tls", "none") != "none":
                options.setdefault("tls_files", tls_files)
            server = SMTPTestServer(**options).start()
            started.callback(server.stop)
            return server

        yield factory
