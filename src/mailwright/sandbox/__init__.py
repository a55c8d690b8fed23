"""The sandbox: an embedded SMTP server that captures mail instead of delivering it.

A newcomer can point a target at it (127.0.0.1, port 2525, no TLS, no account key)
and see every message that would have been sent: ``SandboxServer`` receives,
``SandboxStore`` keeps them on disk, ``parse_message`` and ``safe_html`` prepare them
for display.
"""

from mailwright.domain.mime_reader import AttachmentInfo, ParsedMessage, parse_message, safe_html
from mailwright.sandbox.server import DEFAULT_SANDBOX_PORT, SandboxServer
from mailwright.sandbox.store import (
    CapturedMessage,
    CapturedSummary,
    SandboxStore,
)

SANDBOX_TARGET_NAME = "Local sandbox"
SANDBOX_DIRECTORY_NAME = "sandbox"

__all__ = [
    "DEFAULT_SANDBOX_PORT",
    "SANDBOX_DIRECTORY_NAME",
    "SANDBOX_TARGET_NAME",
    "AttachmentInfo",
    "CapturedMessage",
    "CapturedSummary",
    "ParsedMessage",
    "SandboxServer",
    "SandboxStore",
    "parse_message",
    "safe_html",
]
