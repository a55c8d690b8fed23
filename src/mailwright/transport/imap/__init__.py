"""IMAP: the client (`client`), how command arguments are written (`arguments`), how
answers are parsed (`responses`) and the connection test (`report`).

The names other packages use are importable from here.
"""

from mailwright.transport.imap.arguments import (
    decode_mailbox_name,
    encode_mailbox_name,
    flag_list,
    quote_mailbox,
    quote_string,
    uid_set,
)
from mailwright.transport.imap.client import IMAP, IMAPConnection, IMAPEndpoint
from mailwright.transport.imap.report import connection_report, imap_capabilities
from mailwright.transport.imap.responses import (
    Folder,
    parse_fetch_bodies,
    parse_fetch_flags,
    parse_list,
    parse_search,
)
from mailwright.transport.session import (
    CredentialsOutcome,
    MailEndpoint,
    auth_refused,
    credentials_failure,
)

__all__ = [
    "IMAP",
    "CredentialsOutcome",
    "Folder",
    "IMAPConnection",
    "IMAPEndpoint",
    "MailEndpoint",
    "auth_refused",
    "connection_report",
    "credentials_failure",
    "decode_mailbox_name",
    "encode_mailbox_name",
    "flag_list",
    "imap_capabilities",
    "parse_fetch_bodies",
    "parse_fetch_flags",
    "parse_list",
    "parse_search",
    "quote_mailbox",
    "quote_string",
    "uid_set",
]
