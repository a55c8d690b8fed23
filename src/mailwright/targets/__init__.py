"""Target types, one module each; importing this package registers them."""

from mailwright.targets import imap, pop3, smtp

__all__ = ["imap", "pop3", "smtp"]
