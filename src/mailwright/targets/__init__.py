"""Target types, one module each; importing this package registers them (SMTP first: the default)."""

from mailwright.targets import smtp  # isort: skip
from mailwright.targets import imap, pop3  # isort: skip
from mailwright.targets import graph  # isort: skip

__all__ = ["graph", "imap", "pop3", "smtp"]
