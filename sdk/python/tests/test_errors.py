"""Every error class, each from a real answer of the real stack (429 and 503, which a healthy
stack does not give on demand, come from an injecting proxy in test_retries.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from helpers import Proxy, unique_user

import tally_credits
from tally_credits import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    Tally,
    TallyError,
    UnavailableError,
)


def raised(call: Callable[[], object]) -> TallyError:
    with pytest.raises(TallyError) as info:
        call()
    return info.value


def assert_error(error: TallyError, kind: type[TallyError], status: int, code: str) -> None:
    assert type(error) is kind, f"expected {kind.__name__}, got {type(error).__name__}: {error}"
    assert isinstance(error, TallyError)
    assert (error.status, error.code) == (status, code)
    if status:
        assert error.body is not None
        assert (error.body["error"], error.body["success"]) == (code, False)
        assert str(error) == error.message == error.body["message"]


def test_every_error_class_is_a_tally_error_and_importable_from_the_package() -> None:
    for name in tally_credits.errors.__all__:
        kind = getattr(tally_credits, name)
        assert kind is getattr(tally_credits.errors, name)
        assert issubclass(kind, TallyError), name
    assert issubclass(IdempotencyConflictError, ConflictError)
    assert issubclass(TallyError, Exception)
    assert len(tally_credits.errors.__all__) == 13


def test_a_deduct_above_what_is_available_is_insufficient_credits_error_with_balance_and_available(
    tally: Tally,
) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=40)
    tally.credits.hold(user_id=user, amount=15)

    error = raised(lambda: tally.credits.deduct(user_id=user, amount=50))

    assert_error(error, InsufficientCreditsError, 402, "insufficient_credits")
    assert isinstance(error, InsufficientCreditsError)
    assert (error.balance, error.available) == (40, 25)
    assert tally.credits.balance(user_id=user).balance == 40


def test_a_second_full_refund_is_conflict_error_already_refunded(tally: Tally) -> None:
    user = unique_user()
    added = tally.credits.add(user_id=user, amount=10)
    tally.credits.refund(ledger_id=added.ledger_id)

    error = raised(lambda: tally.credits.refund(ledger_id=added.ledger_id))

    assert_error(error, ConflictError, 409, "already_refunded")


def test_capturing_a_released_hold_is_conflict_error_hold_not_active(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=10)
    held = tally.credits.hold(user_id=user, amount=5)
    tally.credits.release(hold_id=held.hold_id)

    assert_error(raised(lambda: tally.credits.capture(hold_id=held.hold_id)), ConflictError, 409, "hold_not_active")


def test_a_key_reused_with_another_body_is_idempotency_conflict_error(tally: Tally) -> None:
    user = unique_user()
    key = str(uuid.uuid4())
    tally.credits.add(user_id=user, amount=10, idempotency_key=key)

    error = raised(lambda: tally.credits.add(user_id=user, amount=11, idempotency_key=key))

    assert_error(error, IdempotencyConflictError, 409, "idempotency_conflict")
    assert error.idempotency_key == key
    assert tally.credits.balance(user_id=user).balance == 10


def test_an_unknown_command_ledger_entry_or_hold_is_not_found_error(tally: Tally) -> None:
    unknown = str(uuid.uuid4())
    assert_error(raised(lambda: tally.commands.get(command_id=unknown)), NotFoundError, 404, "not_found")
    assert_error(raised(lambda: tally.credits.refund(ledger_id=unknown)), NotFoundError, 404, "not_found")
    assert_error(raised(lambda: tally.credits.release(hold_id=unknown)), NotFoundError, 404, "not_found")


def test_a_wrong_or_missing_api_key_is_authentication_error(
    make_client: Callable[..., Tally], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = make_client(api_key="tk_definitely_not_a_key")
    assert_error(raised(lambda: wrong.credits.balance(user_id=unique_user())), AuthenticationError, 401, "unauthorized")

    monkeypatch.delenv("TALLY_API_KEY")
    none = make_client(api_key=None)
    error = raised(lambda: none.credits.add(user_id=unique_user(), amount=1))
    assert_error(error, AuthenticationError, 401, "unauthorized")


@pytest.mark.parametrize("amount", [0, -5, 1.5, "10", 10**13])
def test_the_server_not_the_sdk_rejects_a_bad_amount_bad_request_error_naming_the_field(
    tally: Tally, amount: Any
) -> None:
    error = raised(lambda: tally.credits.add(user_id=unique_user(), amount=amount))

    assert_error(error, BadRequestError, 400, "invalid_request")
    assert error.body is not None and error.body["field"] == "amount"


def test_an_unknown_field_a_malformed_id_or_a_forged_cursor_is_bad_request_error(tally: Tally) -> None:
    typo: dict[str, Any] = {"user_id": unique_user(), "amount": 1, "ammount": 2}
    assert_error(raised(lambda: tally.credits.deduct(**typo)), BadRequestError, 400, "invalid_request")
    bad_id = raised(lambda: tally.commands.get(command_id="not-a-uuid"))
    assert_error(bad_id, BadRequestError, 400, "invalid_request")
    assert bad_id.body is not None and bad_id.body["field"] == "command_id"
    bad_cursor = raised(lambda: tally.credits.history(user_id=unique_user(), cursor="forged"))
    assert bad_cursor.body is not None and bad_cursor.body["field"] == "cursor"


def test_a_body_over_64_kib_is_bad_request_error_payload_too_large(tally: Tally) -> None:
    error = raised(lambda: tally.credits.add(user_id=unique_user(), amount=1, description="x" * 70_000))

    assert_error(error, BadRequestError, 413, "payload_too_large")


def test_a_refund_of_a_refund_is_bad_request_error_not_refundable(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=10)
    deducted = tally.credits.deduct(user_id=user, amount=4)
    refund = tally.credits.refund(ledger_id=deducted.ledger_id)

    error = raised(lambda: tally.credits.refund(ledger_id=refund.ledger_id))

    assert_error(error, BadRequestError, 422, "not_refundable")


def test_nothing_listening_is_connection_error_after_the_retries(make_client: Callable[..., Tally]) -> None:
    attempts: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [attempts.append]}) as http_client:
        tally = make_client(base_url="http://127.0.0.1:1", max_retries=1, http_client=http_client)

        error = raised(lambda: tally.credits.balance(user_id=unique_user()))

    assert_error(error, ConnectionError, 0, "connection_error")
    assert error.body is None
    assert isinstance(error.__cause__, httpx.TransportError)
    assert len(attempts) == 2


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "invalid_request", BadRequestError),
        (401, "unauthorized", AuthenticationError),
        (402, "insufficient_credits", InsufficientCreditsError),
        (404, "not_found", NotFoundError),
        (409, "already_refunded", ConflictError),
        (409, "hold_not_active", ConflictError),
        (409, "idempotency_in_progress", ConflictError),
        (409, "idempotency_conflict", IdempotencyConflictError),
        (413, "payload_too_large", BadRequestError),
        (415, "unsupported_media_type", BadRequestError),
        (422, "balance_overflow", BadRequestError),
        (429, "rate_limited", RateLimitError),
        (503, "unavailable", UnavailableError),
        (500, "internal", TallyError),
    ],
)
def test_each_status_and_code_maps_to_its_class_as_in_the_typescript_sdk(
    status: int, code: str, kind: type[TallyError]
) -> None:
    body = {"success": False, "error": code, "message": f"{code} happened"}

    assert_error(tally_credits.errors.error_from_answer(status, body), kind, status, code)


def test_an_error_answer_without_a_json_body_is_a_tally_error_named_by_its_status() -> None:
    error = tally_credits.errors.error_from_answer(502, None)

    assert type(error) is TallyError
    assert (error.status, error.code, str(error), error.body) == (502, "http_502", "HTTP 502", None)


def test_a_2xx_answer_that_is_not_the_expected_object_is_tally_error_invalid_response(
    make_client: Callable[..., Tally], start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy([{"status": 200, "body": {"unexpected": True}}])
    tally = make_client(base_url=proxy.url)

    error = raised(lambda: tally.credits.balance(user_id=unique_user()))

    assert (type(error), error.code) == (TallyError, "invalid_response")
