"""Verifying the events Tally sends to your webhook endpoints (Standard Webhooks).

    from tally_credits.webhooks import verify, WebhookVerificationError

    @app.post("/tally-events")
    async def tally_events(request: Request) -> Response:
        try:
            event = verify(await request.body(), request.headers, secret=TALLY_WEBHOOK_SECRET)
        except WebhookVerificationError:
            return Response(status_code=400)
        ...  # act on event.type and event.data, once per event.id (deliveries repeat)
        return Response(status_code=204)

Each delivery carries `webhook-id` (the event id, the same on every attempt),
`webhook-timestamp` (Unix seconds) and `webhook-signature`: one or more space-separated
`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the bytes the endpoint's
`whsec_<base64>` secret encodes (two while a secret is being rotated).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from ._model import Model
from .errors import WebhookVerificationError

__all__ = ["DEFAULT_TOLERANCE_SECONDS", "WebhookEvent", "WebhookVerificationError", "verify"]

# How far a delivery's timestamp may be from now, either way, as Standard Webhooks says.
DEFAULT_TOLERANCE_SECONDS = 300
SECRET_PREFIX = "whsec_"


class Headers(Protocol):
    """Request headers as web frameworks give them: a Mapping (Starlette, Django, a dict) or
    anything else with `items()` (Werkzeug's Headers)."""

    def items(self) -> Iterable[tuple[str, str]]: ...


@dataclass(frozen=True, kw_only=True)
class WebhookEvent(Model):
    """An event Tally sent: `{ id, type, created_at, app_id, user_id, sequence, data }`."""

    id: str
    """The event's id; the same on every delivery of it (dedupe on it)."""
    type: str
    """`balance.low`, `credits.added`, `hold.expired`, `ping`, ..."""
    created_at: str | None = None
    app_id: str | None = None
    user_id: str | None = None
    sequence: int | None = None
    """Increases with each event of one app and user: order a user's events by it."""
    data: dict[str, Any] = field(default_factory=dict)
    """What happened; its fields depend on `type`."""

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            _body=body,
            id=body["id"],
            type=body["type"],
            created_at=body.get("created_at"),
            app_id=body.get("app_id"),
            user_id=body.get("user_id"),
            sequence=body.get("sequence"),
            data=body.get("data") or {},
        )


def verify(
    body: bytes | str,
    headers: Headers,
    secret: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> WebhookEvent:
    """Checks a delivery's signature and timestamp on its raw body, then parses it.

    `body`: the request body exactly as received (bytes, or str decoded as UTF-8) - not a
    re-serialised JSON object. `headers`: the request's headers (names in any case).
    `secret`: the endpoint's `whsec_...` secret. Raises WebhookVerificationError (answer 400)
    when a header is missing, the timestamp is more than `tolerance_seconds` away from now, no
    `v1` signature matches, or the body is not a JSON event; ValueError when `secret` is not a
    `whsec_` secret.
    """
    key = _secret_key(secret)
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lowered = {name.lower(): value for name, value in headers.items()}
    event_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (event_id and timestamp and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header", code="missing_headers"
        )
    _check_timestamp(timestamp, tolerance_seconds)
    signed = f"{event_id}.{timestamp}.".encode() + raw
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in _v1_signatures(signatures)):
        raise WebhookVerificationError("no webhook-signature matches the body", code="invalid_signature")
    try:
        parsed = json.loads(raw)
        if (
            not isinstance(parsed, dict)
            or not isinstance(parsed.get("id"), str)
            or not isinstance(parsed.get("type"), str)
        ):
            raise ValueError("not an event object with an id and a type")
    except ValueError as error:
        raise WebhookVerificationError(f"the body is not a JSON event: {error}", code="invalid_body") from error
    return WebhookEvent.from_dict(parsed)


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as error:
        raise ValueError("the webhook secret is not whsec_ followed by base64") from error
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _check_timestamp(timestamp: str, tolerance_seconds: float) -> None:
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp!r} is not Unix seconds", code="invalid_timestamp"
        ) from None
    age_seconds = time.time() - sent_at
    if age_seconds > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {age_seconds:.0f} s old (tolerance {tolerance_seconds} s)", code="timestamp_too_old"
        )
    if -age_seconds > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {-age_seconds:.0f} s ahead (tolerance {tolerance_seconds} s)",
            code="timestamp_too_new",
        )


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded `v1` signatures of a webhook-signature header; other versions and malformed
    entries are skipped."""
    decoded = []
    for entry in header.split():
        version, _, signature = entry.partition(",")
        if version != "v1" or not signature:
            continue
        try:
            decoded.append(base64.b64decode(signature, validate=True))
        except binascii.Error:
            continue
    return decoded
