"""tally_credits.webhooks.verify against deliveries signed by the `standardwebhooks` package (the
reference implementation) and by hand, as Tally's outbound events will be."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from tally_credits import TallyError, webhooks
from tally_credits.webhooks import WebhookEvent, WebhookVerificationError, verify

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
EVENT = {
    "id": "0193a000-0000-7000-8000-0000000000e1",
    "type": "balance.low",
    "created_at": "2026-12-03T09:00:00Z",
    "app_id": "0193a000-0000-7000-8000-0000000000a1",
    "user_id": "user_abc123",
    "sequence": 17,
    "data": {"threshold": 100, "balance": 90, "held": 0, "available": 90},
}
BODY = json.dumps(EVENT).encode()


def signed_by_standardwebhooks(body: bytes, *, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    sent_at = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    signature = Webhook(secret).sign(msg_id=str(EVENT["id"]), timestamp=sent_at, data=body.decode())
    return {
        "webhook-id": str(EVENT["id"]),
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature,
    }


def signature_by_hand(body: bytes, event_id: str, timestamp: str, secret: str = SECRET) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def refusal(body: bytes | str, headers: dict[str, str], secret: str = SECRET) -> WebhookVerificationError:
    with pytest.raises(WebhookVerificationError) as raised:
        verify(body, headers, secret)
    return raised.value


def test_a_delivery_signed_by_standardwebhooks_verifies_and_parses_to_the_event() -> None:
    event = verify(BODY, signed_by_standardwebhooks(BODY), SECRET)

    assert isinstance(event, WebhookEvent)
    assert (event.id, event.type, event.user_id, event.sequence) == (EVENT["id"], "balance.low", "user_abc123", 17)
    assert event.data["available"] == 90
    assert event.to_dict() == EVENT


def test_a_signature_made_by_hand_verifies_and_the_body_may_be_a_str() -> None:
    timestamp = str(int(time.time()))
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": timestamp,
        "webhook-signature": signature_by_hand(BODY, "evt_1", timestamp),
    }

    assert verify(BODY.decode(), headers, SECRET).type == "balance.low"


def test_our_signature_is_what_standardwebhooks_verifies_too() -> None:
    timestamp = str(int(time.time()))
    headers = {"webhook-id": "evt_2", "webhook-timestamp": timestamp}
    headers["webhook-signature"] = signature_by_hand(BODY, "evt_2", timestamp)

    assert Webhook(SECRET).verify(BODY, headers) == EVENT


def test_any_one_of_several_space_separated_signatures_may_match_during_a_secret_rotation() -> None:
    previous = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    headers = signed_by_standardwebhooks(BODY, secret=previous)
    current = signed_by_standardwebhooks(BODY)["webhook-signature"]
    headers["webhook-signature"] = f"v2,bm90LWEtdjE= {headers['webhook-signature']} v1,not-base64! {current}"

    assert verify(BODY, headers, SECRET).id == EVENT["id"]
    assert verify(BODY, headers, previous).id == EVENT["id"]


def test_header_names_are_matched_in_any_case_and_headers_need_only_items() -> None:
    headers = {name.title(): value for name, value in signed_by_standardwebhooks(BODY).items()}

    class WerkzeugLikeHeaders:
        def items(self) -> list[tuple[str, str]]:
            return list(headers.items())

    assert verify(BODY, headers, SECRET).type == "balance.low"
    assert verify(BODY, WerkzeugLikeHeaders(), SECRET).type == "balance.low"


def test_the_secret_may_be_given_without_its_whsec_prefix() -> None:
    assert verify(BODY, signed_by_standardwebhooks(BODY), SECRET.removeprefix("whsec_")).type == "balance.low"


def test_another_secret_a_changed_body_or_a_changed_id_is_refused() -> None:
    headers = signed_by_standardwebhooks(BODY)
    other_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()

    assert refusal(BODY, headers, other_secret).code == "invalid_signature"
    assert refusal(BODY.replace(b"90", b"99"), headers).code == "invalid_signature"
    assert refusal(BODY, {**headers, "webhook-id": "another"}).code == "invalid_signature"
    assert refusal(BODY, {**headers, "webhook-signature": "v1,"}).code == "invalid_signature"


def test_a_missing_header_is_refused() -> None:
    headers = signed_by_standardwebhooks(BODY)
    for name in headers:
        without = {other: value for other, value in headers.items() if other != name}
        assert refusal(BODY, without).code == "missing_headers", name


def test_a_timestamp_more_than_5_minutes_old_or_ahead_is_refused_within_it_accepted() -> None:
    now = time.time()

    assert refusal(BODY, signed_by_standardwebhooks(BODY, at=now - 310)).code == "timestamp_too_old"
    assert refusal(BODY, signed_by_standardwebhooks(BODY, at=now + 310)).code == "timestamp_too_new"
    assert verify(BODY, signed_by_standardwebhooks(BODY, at=now - 240), SECRET).id == EVENT["id"]
    assert verify(BODY, signed_by_standardwebhooks(BODY, at=now + 240), SECRET).id == EVENT["id"]
    headers = {**signed_by_standardwebhooks(BODY), "webhook-timestamp": "yesterday"}
    assert refusal(BODY, headers).code == "invalid_timestamp"


def test_a_correctly_signed_body_that_is_not_a_json_event_is_refused() -> None:
    for body in (b"not json", b"[1, 2]", b'{"type": "ping"}'):
        assert refusal(body, signed_by_standardwebhooks(body)).code == "invalid_body"


def test_a_refusal_is_a_tally_error_and_a_malformed_secret_is_a_value_error() -> None:
    error = refusal(BODY, {})
    assert isinstance(error, TallyError)
    assert (error.status, error.body) == (0, None)
    with pytest.raises(ValueError, match="base64"):
        verify(BODY, signed_by_standardwebhooks(BODY), "whsec_***")
    with pytest.raises(ValueError, match="empty"):
        verify(BODY, signed_by_standardwebhooks(BODY), "whsec_")


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(webhooks.hmac, "compare_digest", compare_digest)
    verify(BODY, signed_by_standardwebhooks(BODY), SECRET)

    assert len(compared) == 1
