"""Microsoft Graph: sending mail through `/users/{mailbox}/sendMail`, and the connection test.

Our own thin client on httpx (`client.GraphClient`), not Microsoft's `msgraph-sdk`: the
SDK pulls in Kiota, azure-identity and some forty modules for the handful of calls we
make (sendMail, drafts, upload sessions, users, folders and messages), and it would
bring its own token handling, while our tokens come from the account key's
`TokenSource` (`Login.tokens`). The client maps Graph's answers onto our error tree:

- 401: the token is refreshed once (`access_token(refresh=True)`) and the call retried once;
- 403: `GraphPermissionError`, naming the application permission the call needs and where
  to grant it (Entra ID → App registrations → API permissions, then admin consent);
- 429, 503 (and other 5xx): `TargetDeferredError` carrying `Retry-After`, retried later;
- network failures and timeouts: `TargetConnectError`, `TargetTimeoutError`; a timeout once
  a message was handed over is marked outcome unknown, never retried blindly.

Modules: `client` (requests, errors), `convert` (a prepared MIME message as Graph's
message JSON), `send` (sendMail; large attachments through a draft and upload sessions),
`report` (the connection test), `mailbox` (the mailbox as IMAP's `FolderMailbox`, and
delta queries for the trigger).
"""

from __future__ import annotations

from mailwright.transport.graph.client import GraphClient, GraphEndpoint, GraphPermissionError

__all__ = ["GraphClient", "GraphEndpoint", "GraphPermissionError"]
