"""The whole synchronous surface against the real stack: writes, reads, paging, async handles,
typed answers, configuration."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import httpx
import pytest
from helpers import API_KEY, BASE_URL, unique_user

from tally_credits import (
    BalanceResponse,
    CommandHandle,
    HistoryEntry,
    InsufficientCreditsError,
    Tally,
    TallyError,
    WriteResponse,
)

UUID = re.compile(r"^[0-9a-f-]{36}$")


def test_add_deduct_and_balance_the_three_calls_of_the_readme(tally: Tally) -> None:
    user = unique_user()

    added = tally.credits.add(user_id=user, amount=500, description="Starter pack")
    deducted = tally.credits.deduct(user_id=user, amount=50)
    balance = tally.credits.balance(user_id=user).balance

    assert isinstance(added, WriteResponse)
    assert added.success is True
    assert added.user_id == user
    assert added.balance_after == 500
    assert UUID.match(added.ledger_id)
    assert deducted.balance_after == 450
    assert balance == 450


def test_an_answer_reads_as_attributes_and_to_dict_is_the_apis_body(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=7, metadata={"order": "42"})

    balance = tally.credits.balance(user_id=user)
    raw = httpx.get(
        f"{BASE_URL}/credits/balance", params={"user_id": user}, headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()

    assert isinstance(balance, BalanceResponse)
    assert balance.to_dict() == raw
    assert (balance.balance, balance.held, balance.available) == (7, 0, 7)
    entry = tally.credits.history(user_id=user).entries[0]
    assert isinstance(entry, HistoryEntry)
    assert entry.metadata == {"order": "42"}
    assert entry.to_dict()["metadata"] == {"order": "42"}
    with pytest.raises(AttributeError):
        balance.balance = 1  # type: ignore[misc]


def test_balance_of_a_user_never_written_is_0_with_nothing_held(tally: Tally) -> None:
    result = tally.credits.balance(user_id=unique_user())

    assert (result.balance, result.held, result.available, result.next_expiry) == (0, 0, 0, None)


def test_added_credits_that_expire_show_as_next_expiry(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=30, expires_in_seconds=3600)

    result = tally.credits.balance(user_id=user)

    assert result.next_expiry is not None
    assert result.next_expiry.amount == 30
    assert result.next_expiry.expires_at


def test_refund_of_a_deduct_gives_the_credits_back_and_names_the_refunded_entry(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=100)
    deducted = tally.credits.deduct(user_id=user, amount=60, metadata={"job": "7"})

    refunded = tally.credits.refund(ledger_id=deducted.ledger_id, amount=20)

    assert refunded.balance_after == 60
    assert refunded.refunded_ledger_id == deducted.ledger_id
    assert refunded.user_id == user


def test_hold_capture_release_and_holds_reserve_now_charge_the_real_cost_later(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=300)

    held = tally.credits.hold(user_id=user, amount=100, expires_in_seconds=600)
    assert (held.amount, held.balance, held.available) == (100, 300, 200)
    captured = tally.credits.capture(hold_id=held.hold_id, amount=37)
    assert (captured.captured, captured.released, captured.balance_after) == (37, 63, 263)

    second = tally.credits.hold(user_id=user, amount=50)
    released = tally.credits.release(hold_id=second.hold_id)
    assert (released.released, released.available) == (50, 263)

    every = tally.credits.holds(user_id=user)
    assert sorted(hold.status for hold in every.holds) == ["captured", "released"]
    captured_only = tally.credits.holds(user_id=user, status="captured")
    assert [hold.hold_id for hold in captured_only.holds] == [held.hold_id]


def test_history_pages_newest_first_with_next_cursor(tally: Tally) -> None:
    user = unique_user()
    for amount in (1, 2, 3):
        tally.credits.add(user_id=user, amount=amount, description=f"add {amount}")

    first = tally.credits.history(user_id=user, limit=2)
    assert [entry.amount for entry in first.entries] == [3, 2]
    assert (first.entries[0].type, first.entries[0].description) == ("add", "add 3")
    assert isinstance(first.next_cursor, str)
    second = tally.credits.history(user_id=user, limit=2, cursor=first.next_cursor)
    assert [entry.amount for entry in second.entries] == [1]
    assert second.next_cursor is None


def test_history_all_follows_cursors_over_several_pages_and_yields_every_entry_once(
    make_client: Callable[..., Tally],
) -> None:
    history_requests: list[httpx.Request] = []

    def count(request: httpx.Request) -> None:
        if request.url.path == "/credits/history":
            history_requests.append(request)

    with httpx.Client(event_hooks={"request": [count]}) as http_client:
        tally = make_client(http_client=http_client)
        user = unique_user()
        for amount in range(1, 8):
            tally.credits.add(user_id=user, amount=amount)

        amounts = [entry.amount for entry in tally.credits.history_all(user_id=user, limit=3)]

    assert amounts == [7, 6, 5, 4, 3, 2, 1]
    assert len(history_requests) == 3, "7 entries at 3 a page are 3 pages"


def test_history_all_of_a_user_with_no_entries_yields_nothing(tally: Tally) -> None:
    assert list(tally.credits.history_all(user_id=unique_user())) == []


def test_respond_async_returns_a_handle_whose_wait_gives_the_synchronous_result(tally: Tally) -> None:
    user = unique_user()

    handle = tally.credits.add(user_id=user, amount=40, respond_async=True)
    assert isinstance(handle, CommandHandle)
    assert handle.command_id is not None and UUID.match(handle.command_id)
    assert handle.status_url == f"/commands/{handle.command_id}"
    result = handle.wait(timeout=30)

    assert (result.success, result.balance_after, result.user_id) == (True, 40, user)
    status = tally.commands.get(command_id=handle.command_id)
    assert (status.status, status.http_status) == ("applied", 200)
    assert status.result == result.to_dict()


def test_wait_on_a_rejected_async_command_raises_the_error_the_synchronous_call_would_have(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=10)

    handle = tally.credits.deduct(user_id=user, amount=11, respond_async=True)
    with pytest.raises(InsufficientCreditsError) as raised:
        handle.wait()

    error = raised.value
    assert isinstance(error, TallyError)
    assert (error.status, error.code, error.balance, error.available) == (402, "insufficient_credits", 10, 10)
    assert tally.credits.balance(user_id=user).balance == 10


def test_every_async_write_kind_can_be_waited_on(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=100, respond_async=True).wait()
    deduct = tally.credits.deduct(user_id=user, amount=30, respond_async=True).wait()
    refund = tally.credits.refund(ledger_id=deduct.ledger_id, respond_async=True).wait()
    hold = tally.credits.hold(user_id=user, amount=10, respond_async=True).wait()
    capture = tally.credits.capture(hold_id=hold.hold_id, respond_async=True).wait()
    second_hold = tally.credits.hold(user_id=user, amount=5, respond_async=True).wait()
    release = tally.credits.release(hold_id=second_hold.hold_id, respond_async=True).wait()

    assert refund.balance_after == 100
    assert capture.balance_after == 90
    assert release.released == 5


def test_an_explicit_idempotency_key_replays_the_first_answer_exactly(tally: Tally) -> None:
    user = unique_user()
    key = str(uuid.uuid4())

    first = tally.credits.add(user_id=user, amount=25, idempotency_key=key)
    again = tally.credits.add(user_id=user, amount=25, idempotency_key=key)

    assert again == first
    assert again.to_dict() == first.to_dict()
    assert tally.credits.balance(user_id=user).balance == 25


def test_an_async_write_repeated_with_its_key_after_it_finished_gives_a_handle_with_the_result(tally: Tally) -> None:
    user = unique_user()
    key = str(uuid.uuid4())
    first = tally.credits.add(user_id=user, amount=6, idempotency_key=key)

    handle = tally.credits.add(user_id=user, amount=6, idempotency_key=key, respond_async=True)

    assert (handle.command_id, handle.status_url) == (None, None)
    assert handle.wait() == first


def test_calls_without_an_explicit_key_are_separate_writes(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=25)
    tally.credits.add(user_id=user, amount=25)

    assert tally.credits.balance(user_id=user).balance == 50


def test_webhooks_events_lists_an_apps_received_events_none_for_a_fresh_app(tally: Tally) -> None:
    stripe = tally.webhooks.events(provider="stripe", limit=10)
    every = tally.webhooks.events()

    assert (stripe.events, stripe.next_cursor) == ([], None)
    assert every.events == []


def test_api_key_and_base_url_come_from_the_environment_and_explicit_arguments_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Tally() as from_env:
        assert from_env.credits.balance(user_id=unique_user()).balance == 0

    monkeypatch.setenv("TALLY_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("TALLY_API_KEY", "tk_not_a_key")
    with Tally(api_key=API_KEY, base_url=f"{BASE_URL}/") as explicit:
        assert explicit.credits.balance(user_id=unique_user()).balance == 0

    monkeypatch.delenv("TALLY_BASE_URL")
    with pytest.raises(ValueError, match="TALLY_BASE_URL"):
        Tally(api_key=API_KEY)


def test_a_client_closes_its_connections_but_not_those_of_an_http_client_it_was_given() -> None:
    with Tally(api_key=API_KEY, base_url=BASE_URL) as tally:
        tally.credits.balance(user_id=unique_user())
    assert tally._http.is_closed

    with httpx.Client() as mine:
        with Tally(api_key=API_KEY, base_url=BASE_URL, http_client=mine) as tally:
            tally.credits.balance(user_id=unique_user())
        assert not mine.is_closed
