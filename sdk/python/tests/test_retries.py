"""Safe retries through a proxy that injects failures in front of the real ingress: a retried
write carries the same Idempotency-Key and takes effect exactly once; only network errors,
timeouts, 429, 503 and 409 idempotency_in_progress are retried; Retry-After is honoured."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import Proxy, Seen, balance_of, history_of, is_write, unique_user

from tally_credits import (
    BadRequestError,
    ConnectionError,
    InsufficientCreditsError,
    RateLimitError,
    Tally,
    UnavailableError,
    WaitTimeoutError,
    _core,
)

StartProxy = Callable[..., Proxy]
MakeClient = Callable[..., Tally]


def rate_limited(retry_after: int) -> dict[str, Any]:
    return {
        "status": 429,
        "headers": {"retry-after": str(retry_after)},
        "body": {"success": False, "error": "rate_limited", "message": "request budget spent"},
    }


UNAVAILABLE = {
    "status": 503,
    "headers": {"retry-after": "0"},
    "body": {"success": False, "error": "unavailable", "message": "broker unreachable"},
}
IN_PROGRESS = {
    "status": 409,
    "headers": {"retry-after": "0"},
    "body": {"success": False, "error": "idempotency_in_progress", "message": "in flight"},
}


def through(
    start_proxy: StartProxy, make_client: MakeClient, plan: list[dict[str, Any]], **options: Any
) -> tuple[Proxy, Tally]:
    """A proxy that applies `plan` to writes, and a client that goes through it."""
    proxy = start_proxy(plan, is_write)
    return proxy, make_client(base_url=proxy.url, **options)


def keys(proxy: Proxy) -> set[str | None]:
    return {write.idempotency_key for write in proxy.writes()}


def test_a_write_whose_answer_is_lost_after_it_was_applied_is_retried_with_its_key_and_counts_once(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy, tally = through(start_proxy, make_client, [{"drop": "after"}])
    user = unique_user()

    result = tally.credits.add(user_id=user, amount=70)

    writes = proxy.writes()
    assert len(writes) == 2, "the dropped attempt and one retry"
    assert writes[0].idempotency_key, "a write carries an Idempotency-Key"
    assert writes[1].idempotency_key == writes[0].idempotency_key
    assert result.balance_after == 70
    assert balance_of(user) == 70
    assert [entry.ledger_id for entry in history_of(user)] == [result.ledger_id]


def test_a_deduct_whose_connection_drops_before_the_server_sees_it_is_retried_and_applied_once(
    start_proxy: StartProxy, make_client: MakeClient, tally: Tally
) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=100)
    proxy, through_proxy = through(start_proxy, make_client, [{"drop": "before"}])

    result = through_proxy.credits.deduct(user_id=user, amount=30)

    assert len(proxy.writes()) == 2
    assert result.balance_after == 70
    assert len(history_of(user)) == 2


def test_a_timed_out_attempt_is_retried_with_the_same_key_and_the_write_counts_once(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    # Generous: the retry must be answered within it, on a loaded machine too.
    proxy, tally = through(start_proxy, make_client, [{"hang": True}], timeout=2.0)
    user = unique_user()

    result = tally.credits.add(user_id=user, amount=5)

    assert len(proxy.writes()) == 2
    assert len(keys(proxy)) == 1
    assert result.balance_after == 5
    assert len(history_of(user)) == 1


def test_without_retries_a_timeout_is_connection_error_code_timeout(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy = start_proxy([{"hang": True}])
    tally = make_client(base_url=proxy.url, timeout=0.2, max_retries=0)

    with pytest.raises(ConnectionError) as raised:
        tally.credits.balance(user_id=unique_user())

    assert (raised.value.code, raised.value.status) == ("timeout", 0)


def test_429_rate_limited_is_retried_no_sooner_than_retry_after_and_the_write_counts_once(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy, tally = through(start_proxy, make_client, [rate_limited(1)])
    user = unique_user()

    result = tally.credits.add(user_id=user, amount=9)

    first, second = proxy.writes()
    assert second.idempotency_key == first.idempotency_key
    assert second.at - first.at >= 0.99, f"retried after {second.at - first.at:.3f} s; Retry-After was 1 s"
    assert result.balance_after == 9
    assert len(history_of(user)) == 1


def test_429_with_no_retries_left_is_rate_limit_error_with_the_servers_code_and_retry_after(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy, tally = through(start_proxy, make_client, [rate_limited(7)], max_retries=0)
    user = unique_user()

    with pytest.raises(RateLimitError) as raised:
        tally.credits.add(user_id=user, amount=9)

    error = raised.value
    assert (error.status, error.code, error.retry_after_seconds) == (429, "rate_limited", 7)
    assert error.body is not None and error.body["error"] == "rate_limited"
    assert len(proxy.writes()) == 1
    assert balance_of(user) == 0


def test_a_retry_after_over_a_minute_is_not_waited_out_the_error_is_raised_at_once(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy, tally = through(start_proxy, make_client, [rate_limited(120)])

    with pytest.raises(RateLimitError) as raised:
        tally.credits.add(user_id=unique_user(), amount=1)

    assert raised.value.retry_after_seconds == 120
    assert len(proxy.writes()) == 1


def test_503_is_retried_max_retries_times_then_unavailable_error_and_nothing_changed(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy, tally = through(start_proxy, make_client, [UNAVAILABLE, UNAVAILABLE, UNAVAILABLE])
    user = unique_user()

    with pytest.raises(UnavailableError) as raised:
        tally.credits.add(user_id=user, amount=3)

    assert raised.value.code == "unavailable"
    assert len(proxy.writes()) == 3, "max_retries 2: three attempts"
    assert len(keys(proxy)) == 1
    assert balance_of(user) == 0


def test_a_503_then_success_counts_once(start_proxy: StartProxy, make_client: MakeClient) -> None:
    proxy, tally = through(start_proxy, make_client, [UNAVAILABLE])
    user = unique_user()

    assert tally.credits.add(user_id=user, amount=3).balance_after == 3
    assert len(proxy.writes()) == 2


def test_409_idempotency_in_progress_is_retried_until_the_first_requests_answer_replays(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy, tally = through(start_proxy, make_client, [{"drop": "after"}, IN_PROGRESS])
    user = unique_user()

    result = tally.credits.add(user_id=user, amount=4)

    assert len(proxy.writes()) == 3
    assert result.balance_after == 4
    assert len(history_of(user)) == 1


def test_other_4xx_answers_are_never_retried(start_proxy: StartProxy, make_client: MakeClient) -> None:
    proxy, tally = through(start_proxy, make_client, [])
    user = unique_user()

    with pytest.raises(InsufficientCreditsError):
        tally.credits.deduct(user_id=user, amount=1)
    with pytest.raises(BadRequestError):
        tally.credits.add(user_id=user, amount=0)

    assert len(proxy.writes()) == 2, "one attempt each"


def test_an_async_write_retried_after_a_lost_answer_gives_one_command(
    start_proxy: StartProxy, make_client: MakeClient, tally: Tally
) -> None:
    proxy, through_proxy = through(start_proxy, make_client, [{"drop": "after"}])
    user = unique_user()

    handle = through_proxy.credits.add(user_id=user, amount=8, respond_async=True)
    result = handle.wait()

    assert len(proxy.writes()) == 2
    assert len(keys(proxy)) == 1
    # The retry finds the command finished (or not) and answers its result (or a new 202).
    if handle.command_id is not None:
        assert tally.commands.get(command_id=handle.command_id).status == "applied"
    assert result.balance_after == 8
    assert len(history_of(user)) == 1


def test_a_synchronous_call_answered_202_waits_for_the_command_and_returns_its_result(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy, tally = through(start_proxy, make_client, [{"respond_async": True}])

    result = tally.credits.add(user_id=unique_user(), amount=12)

    assert len(proxy.writes()) == 1
    assert any(seen.method == "GET" and seen.path.startswith("/commands/") for seen in proxy.requests), "polled"
    assert (result.success, result.balance_after) == (True, 12)


def test_a_synchronous_call_answered_202_whose_command_is_rejected_raises_the_typed_error(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    _, tally = through(start_proxy, make_client, [{"respond_async": True}])

    with pytest.raises(InsufficientCreditsError) as raised:
        tally.credits.deduct(user_id=unique_user(), amount=12)

    assert raised.value.balance == 0


def test_wait_on_a_command_that_stays_pending_gives_up_with_wait_timeout_error(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    command_id = "0193a000-0000-7000-8000-000000000001"
    pending = {
        "status": 200,
        "body": {"command_id": command_id, "status": "pending", "http_status": None, "result": None},
    }

    def is_command_read(seen: Seen) -> bool:
        return seen.method == "GET" and seen.path.startswith("/commands/")

    proxy = start_proxy([pending] * 50, is_command_read)
    tally = make_client(base_url=proxy.url)
    handle = tally.credits.add(user_id=unique_user(), amount=1, respond_async=True)

    with pytest.raises(WaitTimeoutError) as raised:
        handle.wait(timeout=0.15, poll_interval=0.01)

    assert (raised.value.code, raised.value.command_id) == ("wait_timeout", handle.command_id)


def test_backoff_doubles_from_a_quarter_second_up_to_8_s_jittered_down_by_at_most_half() -> None:
    for attempt, ceiling in [(0, 0.25), (1, 0.5), (2, 1.0), (5, 8.0), (12, 8.0)]:
        delays = [_core.backoff_seconds(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempt, min(delays), max(delays))


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert _core.parse_retry_after("3") == 3
    assert _core.parse_retry_after(None) is None
    assert _core.parse_retry_after("soon") is None
    assert _core.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    in_a_while = _core.parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT")
    assert in_a_while is not None and in_a_while > 60
