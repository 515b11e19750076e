"""AsyncTally: every call of Tally, awaited, against the real stack (the retry and wait logic is
the one Tally runs, tested in depth in test_retries.py; here it runs on asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from helpers import API_KEY, BASE_URL, Proxy, history_of, is_write, unique_user

from tally_credits import (
    AsyncCommandHandle,
    AsyncTally,
    ConflictError,
    InsufficientCreditsError,
    NotFoundError,
    UnavailableError,
    WaitTimeoutError,
)

pytestmark = pytest.mark.anyio


def client(**options: object) -> AsyncTally:
    return AsyncTally(**{"api_key": API_KEY, "base_url": BASE_URL, **options})  # type: ignore[arg-type]


async def test_add_deduct_refund_and_balance_awaited() -> None:
    user = unique_user()
    async with client() as tally:
        added = await tally.credits.add(user_id=user, amount=500, description="Starter pack")
        deducted = await tally.credits.deduct(user_id=user, amount=50)
        refunded = await tally.credits.refund(ledger_id=deducted.ledger_id, amount=20)
        balance = await tally.credits.balance(user_id=user)

    assert (added.balance_after, deducted.balance_after, refunded.balance_after) == (500, 450, 470)
    assert refunded.refunded_ledger_id == deducted.ledger_id
    assert (balance.balance, balance.available) == (470, 470)


async def test_hold_capture_release_and_holds_awaited() -> None:
    user = unique_user()
    async with client() as tally:
        await tally.credits.add(user_id=user, amount=100)
        held = await tally.credits.hold(user_id=user, amount=40)
        captured = await tally.credits.capture(hold_id=held.hold_id, amount=10)
        second = await tally.credits.hold(user_id=user, amount=5)
        released = await tally.credits.release(hold_id=second.hold_id)
        holds = await tally.credits.holds(user_id=user)

    assert (captured.captured, captured.released, captured.balance_after) == (10, 30, 90)
    assert (released.released, released.available) == (5, 90)
    assert sorted(hold.status for hold in holds.holds) == ["captured", "released"]


async def test_errors_are_the_same_typed_errors() -> None:
    user = unique_user()
    async with client() as tally:
        added = await tally.credits.add(user_id=user, amount=3)
        with pytest.raises(InsufficientCreditsError) as insufficient:
            await tally.credits.deduct(user_id=user, amount=4)
        await tally.credits.refund(ledger_id=added.ledger_id)
        with pytest.raises(ConflictError):
            await tally.credits.refund(ledger_id=added.ledger_id)
        with pytest.raises(NotFoundError):
            await tally.commands.get(command_id="0193a000-0000-7000-8000-000000000002")

    assert (insufficient.value.balance, insufficient.value.available) == (3, 3)


async def test_history_and_history_all_page_through_every_entry() -> None:
    user = unique_user()
    async with client() as tally:
        for amount in range(1, 6):
            await tally.credits.add(user_id=user, amount=amount)
        page = await tally.credits.history(user_id=user, limit=2)
        every = [entry.amount async for entry in tally.credits.history_all(user_id=user, limit=2)]

    assert [entry.amount for entry in page.entries] == [5, 4]
    assert every == [5, 4, 3, 2, 1]


async def test_respond_async_returns_a_handle_to_await() -> None:
    user = unique_user()
    async with client() as tally:
        handle = await tally.credits.add(user_id=user, amount=40, respond_async=True)
        assert isinstance(handle, AsyncCommandHandle)
        assert handle.command_id is not None
        result = await handle.wait()
        status = await tally.commands.get(command_id=handle.command_id)

        rejected = await tally.credits.deduct(user_id=user, amount=41, respond_async=True)
        with pytest.raises(InsufficientCreditsError):
            await rejected.wait()

    assert (result.balance_after, status.status, status.result) == (40, "applied", result.to_dict())


async def test_calls_run_concurrently_on_one_client() -> None:
    user = unique_user()
    async with client() as tally:
        await asyncio.gather(*(tally.credits.add(user_id=user, amount=1) for _ in range(20)))
        balance = await tally.credits.balance(user_id=user)

    assert balance.balance == 20


async def test_a_write_whose_answer_is_lost_is_retried_with_its_key_and_counts_once(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy([{"drop": "after"}, {"status": 503, "headers": {"retry-after": "0"}, "body": {}}], is_write)
    user = unique_user()
    async with client(base_url=proxy.url) as tally:
        result = await tally.credits.add(user_id=user, amount=70)

    writes = proxy.writes()
    assert len(writes) == 3
    assert len({write.idempotency_key for write in writes}) == 1
    assert result.balance_after == 70
    assert [entry.ledger_id for entry in history_of(user)] == [result.ledger_id]


async def test_503_until_the_retries_run_out_is_unavailable_error(start_proxy: Callable[..., Proxy]) -> None:
    unavailable = {"status": 503, "body": {"success": False, "error": "unavailable", "message": "no broker"}}
    proxy = start_proxy([unavailable] * 2, is_write)
    async with client(base_url=proxy.url, max_retries=1) as tally:
        with pytest.raises(UnavailableError):
            await tally.credits.add(user_id=unique_user(), amount=1)

    assert len(proxy.writes()) == 2


async def test_wait_gives_up_with_wait_timeout_error_on_a_command_that_stays_pending(
    start_proxy: Callable[..., Proxy],
) -> None:
    pending = {"status": 200, "body": {"command_id": "x", "status": "pending", "http_status": None, "result": None}}
    proxy = start_proxy([pending] * 50, lambda seen: seen.path.startswith("/commands/"))
    async with client(base_url=proxy.url) as tally:
        handle = await tally.credits.add(user_id=unique_user(), amount=1, respond_async=True)
        with pytest.raises(WaitTimeoutError):
            await handle.wait(timeout=0.1, poll_interval=0.01)


async def test_webhook_events_and_the_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_BASE_URL", BASE_URL)
    monkeypatch.setenv("TALLY_API_KEY", API_KEY)
    async with AsyncTally() as tally:
        events = await tally.webhooks.events(provider="polar")

    assert events.events == []


async def test_aclose_closes_its_connections_but_not_those_of_an_http_client_it_was_given() -> None:
    tally = client()
    await tally.credits.balance(user_id=unique_user())
    await tally.aclose()
    assert tally._http.is_closed

    async with httpx.AsyncClient() as mine:
        async with client(http_client=mine) as given:
            await given.credits.balance(user_id=unique_user())
        assert not mine.is_closed
