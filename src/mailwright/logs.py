"""Logging set-up: every handler scrubs revealed secrets from what it writes."""

from __future__ import annotations

import logging

from mailwright.secrets import RedactingFilter


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Libraries that log every task or command at INFO: heard only with --log-level debug.
    chatty = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for name in ("taskiq", "aio_pika", "aiormq", "mail.log"):  # mail.log: aiosmtpd, every SMTP command
        logging.getLogger(name).setLevel(chatty)
