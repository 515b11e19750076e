"""Typed errors: one class per kind of answer a caller handles differently.

Every error the server sends carries its `error` code in `.code`, its HTTP status in `.status`
and its whole JSON body in `.body`; the SDK itself validates nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BatchRejectedError",
    "ConflictError",
    "ConnectionError",
    "IdempotencyConflictError",
    "InsufficientCreditsError",
    "NotFoundError",
    "RateLimitError",
    "TallyError",
    "UnavailableError",
    "WaitTimeoutError",
    "WebhookVerificationError",
]


class TallyError(Exception):
    """Base class of every error this SDK raises."""

    status: int
    """HTTP status, or 0 when no HTTP answer arrived (network failure, timeout)."""
    code: str
    """The body's `error` code (`insufficient_credits`, `rate_limited`, ...), or an SDK code."""
    body: dict[str, Any] | None
    """The server's whole error body (`{"success": false, "error", "message", ...}`), or None."""
    idempotency_key: str | None
    """The `Idempotency-Key` the request carried, if it was a write."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body
        self.idempotency_key = idempotency_key


class InsufficientCreditsError(TallyError):
    """402 `insufficient_credits`: the user cannot spend that much. Nothing was written."""

    balance: int | None
    """What the user owns."""
    available: int | None
    """What the user may spend (balance minus active holds)."""

    def __init__(self, message: str, **init: Any) -> None:
        super().__init__(message, **init)
        body = self.body or {}
        self.balance = body.get("balance")
        available = body.get("available")
        self.available = self.balance if available is None else available


class ConflictError(TallyError):
    """409: `already_refunded`, `hold_not_active`, `idempotency_in_progress`, ..."""


class IdempotencyConflictError(ConflictError):
    """409 `idempotency_conflict`: the key was used before with another body or path."""


class NotFoundError(TallyError):
    """404 `not_found`: an unknown id, or another app's."""


class AuthenticationError(TallyError):
    """401 `unauthorized`: a missing, malformed, unknown or revoked API key."""


class BadRequestError(TallyError):
    """400, 413, 415 or 422 (but `batch_rejected`): the server refused the request as it is
    (`.body["field"]` names the field)."""


class BatchRejectedError(TallyError):
    """422 `batch_rejected`: an operation of an atomic batch was refused, so none was applied."""

    failed_index: int
    """The refused operation's place in the batch (from 0)."""
    failed: TallyError
    """The error that operation alone would have raised (e.g. InsufficientCreditsError)."""

    def __init__(self, message: str, **init: Any) -> None:
        super().__init__(message, **init)
        body = self.body or {}
        index = body.get("failed_index")
        self.failed_index = index if isinstance(index, int) else -1
        failed = body.get("failed")
        code = failed.get("error") if isinstance(failed, dict) else None
        self.failed = error_from_answer(
            _status_of_code(code if isinstance(code, str) else ""), failed, idempotency_key=self.idempotency_key
        )


class RateLimitError(TallyError):
    """429 `rate_limited`: the app's request budget is spent; nothing changed."""

    retry_after_seconds: float | None
    """Seconds the server asked to wait (`Retry-After`), if it said."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None, **init: Any) -> None:
        super().__init__(message, **init)
        self.retry_after_seconds = retry_after_seconds


class UnavailableError(TallyError):
    """503 `unavailable`: the broker or database is unreachable; the command was not accepted."""


class ConnectionError(TallyError):  # shadows the builtin on purpose: tally_credits.ConnectionError
    """No HTTP answer: the connection failed or dropped (`code` "connection_error"), or the
    attempt timed out (`code` "timeout")."""


class WaitTimeoutError(TallyError):
    """`wait()` on a handle gave up before the command was applied or rejected. The command is
    durable and will still be applied; read it later with `tally.commands.get(command_id=...)`."""

    command_id: str

    def __init__(self, message: str, *, command_id: str) -> None:
        super().__init__(message, status=0, code="wait_timeout")
        self.command_id = command_id


class WebhookVerificationError(TallyError):
    """`tally_credits.webhooks.verify` refused a delivery: a missing header, a timestamp outside
    the tolerance, no matching signature, or a body that is not a JSON event (`.code` says which).
    Answer it with a 400; never act on its body."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, status=0, code=code)


def error_from_answer(
    status: int,
    body: object,
    *,
    idempotency_key: str | None = None,
    retry_after_seconds: float | None = None,
) -> TallyError:
    """The typed error for an HTTP error answer (or a rejected command's status and result)."""
    error_body = body if isinstance(body, dict) and isinstance(body.get("error"), str) else None
    code: str = error_body["error"] if error_body else f"http_{status}"
    message = error_body.get("message") if error_body else None
    if not isinstance(message, str):
        message = f"HTTP {status}"
    init: dict[str, Any] = {"status": status, "code": code, "body": error_body, "idempotency_key": idempotency_key}
    match status:
        case 422 if code == "batch_rejected":
            return BatchRejectedError(message, **init)
        case 400 | 413 | 415 | 422:
            return BadRequestError(message, **init)
        case 401:
            return AuthenticationError(message, **init)
        case 402:
            return InsufficientCreditsError(message, **init)
        case 404:
            return NotFoundError(message, **init)
        case 409 if code == "idempotency_conflict":
            return IdempotencyConflictError(message, **init)
        case 409:
            return ConflictError(message, **init)
        case 429:
            return RateLimitError(message, retry_after_seconds=retry_after_seconds, **init)
        case 503:
            return UnavailableError(message, **init)
        case _:
            return TallyError(message, **init)


def _status_of_code(code: str) -> int:
    """The status the API answers with an `error` code (the contract's table), for an error body
    that arrives without its own: the refused operation of an atomic batch."""
    match code:
        case "invalid_request":
            return 400
        case "unauthorized":
            return 401
        case "insufficient_credits":
            return 402
        case "not_found":
            return 404
        case "idempotency_conflict" | "idempotency_in_progress" | "already_refunded" | "hold_not_active":
            return 409
        case "payload_too_large":
            return 413
        case "unsupported_media_type":
            return 415
        case "rate_limited":
            return 429
        case "unavailable":
            return 503
        case _:
            # balance_overflow, not_refundable, and any code this client does not know yet.
            return 422
