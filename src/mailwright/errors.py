"""The one exception tree of Mailwright.

Every error carries structured fields and a message that says what was wrong and
how to fix it. Faces map the tree to their own outcome in one place each
(`api/errors.py` for HTTP status codes, `cli/output.py` for exit codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


class MailwrightError(Exception):
    """Root of every error Mailwright raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field  # the input field at fault, where there is one

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    def details(self) -> dict[str, Any]:
        """Structured fields for API bodies and JSON output; never holds a secret."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.field:
            out["field"] = self.field
        return out


class ConfigError(MailwrightError):
    code = "config_error"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem of one input field: `message` is a sentence, or, when `predicate`, what
    follows the field's name ("must be 65535 or less"), so each face names the field its way."""

    field: str
    message: str
    predicate: bool = False


class ValidationError(MailwrightError):
    """Bad input from a user: 422 in the API, exit 2 in the CLI.

    `field_problems`: every problem found at once, by field, when there were several (the web
    forms show each beside its field); the message sums them up.
    """

    code = "validation_error"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        field: str | None = None,
        field_problems: tuple[FieldProblem, ...] = (),
    ) -> None:
        super().__init__(message, hint=hint, field=field)
        self.field_problems = field_problems


class StepValueError(MailwrightError):
    """A workflow step produced a value its use cannot take (a `for_each` that is not a list)."""

    code = "step_error"


class IdempotencyKeyReusedError(ValidationError):
    """The key was used with another request: answering with the first run would be wrong."""

    def __init__(self, key: str, *, header: str, kept_hours: int) -> None:
        super().__init__(
            f"{header} {key!r} was already used with a different request; use a new key for a new message",
            field=header,
            hint=f"a retry must repeat the first request exactly; keys are kept for {kept_hours} hours",
        )


@dataclass(frozen=True, slots=True)
class BatchProblem:
    """One bad message of a batch: where it is (`line 7`, `message 3`) and what is wrong."""

    where: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}


class BatchRefusedError(ValidationError):
    """Some messages are not valid: nothing was queued. `problems` lists the first of them."""

    def __init__(self, *, problems: list[BatchProblem], bad: int, total: int, source: str) -> None:
        first = problems[0]
        super().__init__(
            f"{source}: {bad:,} of {total:,} message{'s' if total != 1 else ''} "
            f"{'is' if bad == 1 else 'are'} not valid ({first.where}: {first.message}); nothing was queued",
            hint="fix the messages listed and send the batch again",
        )
        self.problems = problems
        self.bad = bad
        self.total = total

    def details(self) -> dict[str, Any]:
        return {**super().details(), "bad": self.bad, "problems": [p.as_dict() for p in self.problems]}


class SandboxMessageTooLargeError(ValidationError):
    """A message larger than the sandbox keeps (its ``max_bytes``); it is not stored."""

    code = "sandbox_message_too_large"

    def __init__(self, *, size: int, limit: int) -> None:
        super().__init__(
            f"the message has {size} bytes; the sandbox keeps messages of at most {limit} bytes",
            field="data",
            hint="send a smaller message, or raise the sandbox size limit",
        )
        self.size = size
        self.limit = limit


class NotFoundError(MailwrightError):
    code = "not_found"


class ConflictError(MailwrightError):
    """The request clashes with what exists (a duplicate name, a key still in use)."""

    code = "conflict"


class AuthorizationError(MailwrightError):
    """A request without a valid API token."""

    code = "unauthorized"


class WrongLoginError(AuthorizationError):
    """A wrong password or token; `slow_down` is how long the answer is held back."""

    def __init__(self, message: str, *, slow_down: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.slow_down = slow_down


class LoginThrottledError(AuthorizationError):
    """Too many failed log-ins: refused without checking the secret (429, `Retry-After`)."""

    code = "too_many_attempts"

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after  # seconds until the lock ends


class PermissionDeniedError(MailwrightError):
    """A valid token or web user whose role may not do this (403): names both roles."""

    code = "forbidden"

    def __init__(self, message: str, *, role: str, required_role: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.role = role
        self.required_role = required_role

    def details(self) -> dict[str, Any]:
        return {**super().details(), "role": self.role, "required_role": self.required_role}


class SecretError(MailwrightError):
    """A stored secret cannot be decrypted: wrong or missing key."""

    code = "secret_error"


class TargetError(MailwrightError):
    """Talking to a target failed; `target` names it by display name."""

    code = "target_error"
    transient = False
    stage: str | None = None  # the protocol step that failed (connect, tls, auth, rcpt…)
    # The message's body was written but no reply came (a drop or a timeout after the final
    # dot): the server may have accepted it. Such a send is never retried blindly.
    outcome_unknown = False

    def __init__(self, message: str, *, target: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.target = target

    def details(self) -> dict[str, Any]:
        out = super().details()
        if self.target:
            out["target"] = self.target
        if self.stage:
            out["stage"] = self.stage
        if self.outcome_unknown:
            out["outcome"] = "unknown"
        return out


class TargetConnectError(TargetError, ConnectionError):
    code = "connect_error"
    transient = True


class TargetTimeoutError(TargetError, TimeoutError):
    code = "timeout"
    transient = True


class TargetTLSError(TargetError):
    """Handshake, verification, or the wrong TLS mode for the port."""

    code = "tls_error"


class CertificateUntrustedError(TargetTLSError):
    """The server's certificate did not verify; `verify_message` is OpenSSL's reason."""

    code = "certificate_untrusted"

    def __init__(
        self,
        message: str,
        *,
        verify_message: str,
        target: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, target=target, hint=hint)
        self.verify_message = verify_message


class TargetAuthError(TargetError):
    """Authentication refused. Never carries the secret or its base64."""

    code = "auth_error"


class _ReplyError(TargetError):
    def __init__(
        self,
        message: str,
        *,
        code: int,
        reply: str,
        recipient: str | None = None,
        target: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, target=target, hint=hint)
        self.smtp_code = code
        self.reply = reply
        self.recipient = recipient

    def details(self) -> dict[str, Any]:
        out = super().details()
        out["smtp_code"] = self.smtp_code
        out["reply"] = self.reply
        if self.recipient:
            out["recipient"] = self.recipient
        return out


class TargetRejectedError(_ReplyError):
    """The server refused permanently (5xx)."""

    code = "rejected"


class TargetDeferredError(_ReplyError):
    """The server refused for now (4xx); worth retrying, after `retry_after` seconds where known."""

    code = "deferred"
    transient = True

    def __init__(
        self,
        message: str,
        *,
        code: int,
        reply: str,
        recipient: str | None = None,
        target: str | None = None,
        hint: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, code=code, reply=reply, recipient=recipient, target=target, hint=hint)
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        out = super().details()
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


class RateLimitedError(TargetError):
    """The target's rate limit holds this message back until `until` (UTC); never a failure."""

    code = "rate_limited"
    transient = True

    def __init__(
        self,
        message: str,
        *,
        until: datetime,
        target: str | None = None,
        hint: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, target=target, hint=hint)
        self.until = until
        self.reason = reason or message  # which limit, without what happens to the message

    def details(self) -> dict[str, Any]:
        return {**super().details(), "until": self.until.isoformat()}


class MessageTooLargeError(TargetError):
    """The message is larger than the server's announced SIZE; caught before sending."""

    code = "message_too_large"

    def __init__(self, message: str, *, size: int, limit: int, target: str | None = None) -> None:
        super().__init__(
            message,
            target=target,
            hint="send smaller or fewer attachments, or a link to the file instead",
        )
        self.size = size
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {**super().details(), "size": self.size, "limit": self.limit}


class RecipientsRefusedError(TargetError):
    """Recipients were refused and the send may not go ahead without them.

    `recipients` holds every recipient's outcome (accepted ones included), so the
    caller can show exactly who was refused and why. Nothing was sent.
    """

    code = "recipients_refused"
    stage = "rcpt"  # refused at RCPT TO: nothing was sent

    def __init__(
        self,
        message: str,
        *,
        recipients: list[dict[str, Any]],
        transient: bool,
        target: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, target=target, hint=hint)
        self.recipients = recipients
        self.transient = transient

    def details(self) -> dict[str, Any]:
        out = {**super().details(), "recipients": self.recipients}
        # The first refusal's reply code, where the others' errors keep theirs (the dashboard
        # counts failures by it).
        codes = [r["code"] for r in self.recipients if r.get("status") == "refused" and r.get("code")]
        if codes:
            out["smtp_code"] = codes[0]
        return out


class LeaseLostError(MailwrightError):
    """This worker no longer holds the run's lease: it must stop sending and write nothing more.

    Raised when a fenced write matches no row (another worker claimed the run,
    bumping its epoch) or when the lease could not be renewed before its margin ran out.
    """

    code = "lease_lost"
