"""Account-key types, one module each; importing this package registers them.

Email Credentials first (the default); the OAuth2 types build their token sources from
`mailwright.oauth` only when a key logs in, so listing the types loads no OAuth library.
"""

from mailwright.keys import email_credentials  # isort: skip
from mailwright.keys import graph, oauth2

__all__ = ["email_credentials", "graph", "oauth2"]
