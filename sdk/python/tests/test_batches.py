"""Credit types and batches against the real stack: several balances per user, and many
operations in one call with a typed result each, all or none when atomic; with Tally and
AsyncTally."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import API_KEY, BASE_URL, Proxy, history_of, is_write, unique_user

from tally_credits import (
    AddResult,
    AsyncTally,
    BatchRejectedError,
    CaptureOperation,
    CaptureResult,
    DeductResult,
    HoldResult,
    InsufficientCreditsError,
    NotFoundError,
    RefundResult,
    Tally,
    TallyError,
)

MakeClient = Callable[..., Tally]
StartProxy = Callable[..., Proxy]


def test_each_credit_type_is_a_balance_of_its_own_written_read_and_listed(tally: Tally) -> None:
    user = unique_user()
    tally.credits.add(user_id=user, amount=100)

    added = tally.credits.add(user_id=user, amount=30, credit_type="image")
    spent = tally.credits.deduct(user_id=user, amount=10, credit_type="image")
    held = tally.credits.hold(user_id=user, amount=5, credit_type="image")
    refunded = tally.credits.refund(ledger_id=spent.ledger_id)

    assert (added.credit_type, added.balance_after) == ("image", 30)
    assert (spent.credit_type, spent.balance_after) == ("image", 20)
    assert (held.credit_type, held.available) == ("image", 15)
    assert (refunded.credit_type, refunded.balance_after) == ("image", 30), "a refund acts on its entry's type"
    default = tally.credits.balance(user_id=user)
    assert (default.credit_type, default.balance) == ("credits", 100)
    image = tally.credits.balance(user_id=user, credit_type="image")
    assert (image.balance, image.held, image.available) == (30, 5, 25)
    balances = tally.credits.balances(user_id=user)
    assert balances.user_id == user
    assert [(b.credit_type, b.balance, b.available) for b in balances.balances] == [
        ("credits", 100, 100),
        ("image", 30, 25),
    ]
    history = tally.credits.history(user_id=user, credit_type="image")
    assert [(e.type, e.credit_type) for e in history.entries] == [
        ("refund", "image"),
        ("deduct", "image"),
        ("add", "image"),
    ]
    holds = tally.credits.holds(user_id=user, credit_type="image")
    assert [(h.hold_id, h.credit_type) for h in holds.holds] == [(held.hold_id, "image")]
    assert tally.credits.holds(user_id=user, credit_type="credits").holds == []


def test_a_batch_answers_each_operation_as_if_sent_alone_typed_by_its_op(tally: Tally) -> None:
    ann, bob = unique_user("ann"), unique_user("bob")
    earlier = tally.credits.add(user_id=ann, amount=50)

    answer = tally.credits.batch(
        operations=[
            {"op": "add", "user_id": bob, "amount": 30, "credit_type": "image"},
            {"op": "deduct", "user_id": bob, "amount": 20},
            {"op": "refund", "ledger_id": earlier.ledger_id, "amount": 5},
            {"op": "hold", "user_id": ann, "amount": 10},
            {"op": "refund", "ledger_id": "00000000-0000-7000-8000-000000000000"},
        ]
    )

    assert [(r.index, r.op, r.status, r.ok) for r in answer.results] == [
        (0, "add", 200, True),
        (1, "deduct", 402, False),
        (2, "refund", 200, True),
        (3, "hold", 200, True),
        (4, "refund", 404, False),
    ]
    add, deduct, refund, hold, unknown = answer.results
    assert isinstance(add, AddResult) and add.answer is not None
    assert (add.answer.credit_type, add.answer.balance_after) == ("image", 30)
    assert isinstance(deduct, DeductResult) and deduct.answer is None
    assert isinstance(deduct.error, InsufficientCreditsError), "the error that call alone would raise"
    assert isinstance(refund, RefundResult) and refund.answer is not None
    assert refund.answer.refunded_ledger_id == earlier.ledger_id
    assert isinstance(hold, HoldResult) and hold.answer is not None
    assert hold.answer.available == 35
    assert isinstance(unknown.error, NotFoundError)

    # An operation's own key works like that request's Idempotency-Key.
    capture: CaptureOperation = {
        "op": "capture",
        "hold_id": hold.answer.hold_id,
        "amount": 4,
        "idempotency_key": f"capture-{ann}",
    }
    first = tally.credits.batch(operations=[capture])
    again = tally.credits.batch(operations=[capture])
    assert isinstance(first.results[0], CaptureResult) and first.results[0].answer is not None
    assert first.results[0].answer.captured == 4
    assert again.results[0].answer == first.results[0].answer
    assert tally.credits.balance(user_id=ann).balance == 41, "50 - 5 refunded - 4 captured, once"


def test_an_atomic_batch_applies_all_or_nothing_and_a_refusal_is_batch_rejected_error(tally: Tally) -> None:
    user = unique_user()

    applied = tally.credits.batch(
        operations=[
            {"op": "add", "user_id": user, "amount": 10},
            {"op": "deduct", "user_id": user, "amount": 4},
        ],
        atomic=True,
    )
    deduct = applied.results[1]
    assert isinstance(deduct, DeductResult) and deduct.answer is not None
    assert deduct.answer.balance_after == 6

    with pytest.raises(BatchRejectedError) as refused:
        tally.credits.batch(
            operations=[
                {"op": "add", "user_id": user, "amount": 100},
                {"op": "deduct", "user_id": user, "amount": 1, "credit_type": "image"},
            ],
            atomic=True,
        )
    error = refused.value
    assert isinstance(error, TallyError)
    assert (error.status, error.code, error.failed_index) == (422, "batch_rejected", 1)
    assert isinstance(error.failed, InsufficientCreditsError), "the refused operation's own error"
    assert error.failed.balance == 0
    assert len(history_of(user)) == 2, "nothing of the refused batch was written"


def test_respond_async_an_atomic_batch_is_one_command_a_batch_that_is_not_one_per_operation(tally: Tally) -> None:
    user = unique_user()

    atomic = tally.credits.batch(
        operations=[{"op": "add", "user_id": user, "amount": 7}], atomic=True, respond_async=True
    )
    assert atomic.command_id is not None
    assert atomic.status_url == f"/commands/{atomic.command_id}"
    done = atomic.wait()
    assert isinstance(done.results[0], AddResult) and done.results[0].answer is not None
    assert done.results[0].answer.balance_after == 7

    each = tally.credits.batch(
        operations=[
            {"op": "add", "user_id": user, "amount": 3},
            {"op": "deduct", "user_id": user, "amount": 50},
        ],
        respond_async=True,
    )
    assert each.command_id is None
    settled = each.wait()
    assert [r.status for r in settled.results] == [200, 402]
    assert isinstance(settled.results[1].error, InsufficientCreditsError)


def test_a_batch_whose_answer_was_lost_is_retried_with_one_key_and_applied_once(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy = start_proxy([{"drop": "after"}], is_write)
    user = unique_user()

    answer = make_client(base_url=proxy.url).credits.batch(
        operations=[
            {"op": "add", "user_id": user, "amount": 8},
            {"op": "deduct", "user_id": user, "amount": 3},
        ]
    )

    assert [r.status for r in answer.results] == [200, 200]
    writes = proxy.writes()
    assert len(writes) == 2
    assert writes[0].idempotency_key is not None
    assert writes[1].idempotency_key == writes[0].idempotency_key
    assert len(history_of(user)) == 2


def test_a_synchronous_batch_waits_for_the_operations_the_server_answered_202(
    start_proxy: StartProxy, make_client: MakeClient
) -> None:
    proxy = start_proxy([{"respond_async": True}, {"respond_async": True}], is_write)
    tally = make_client(base_url=proxy.url)
    user = unique_user()

    answer = tally.credits.batch(
        operations=[
            {"op": "add", "user_id": user, "amount": 5},
            {"op": "deduct", "user_id": user, "amount": 9},
        ]
    )

    assert [r.status for r in answer.results] == [200, 402]
    assert any(seen.method == "GET" and seen.path.startswith("/commands/") for seen in proxy.requests)
    with pytest.raises(BatchRejectedError) as refused:
        tally.credits.batch(operations=[{"op": "deduct", "user_id": user, "amount": 9}], atomic=True)
    assert isinstance(refused.value.failed, InsufficientCreditsError)


@pytest.mark.anyio
async def test_async_tally_reads_balances_and_sends_batches() -> None:
    user = unique_user()
    async with AsyncTally(api_key=API_KEY, base_url=BASE_URL) as tally:
        answer = await tally.credits.batch(
            operations=[
                {"op": "add", "user_id": user, "amount": 9, "credit_type": "chat"},
                {"op": "deduct", "user_id": user, "amount": 2, "credit_type": "chat"},
            ],
            atomic=True,
        )
        balances = await tally.credits.balances(user_id=user)
        handle = await tally.credits.batch(
            operations=[{"op": "deduct", "user_id": user, "amount": 99, "credit_type": "chat"}],
            atomic=True,
            respond_async=True,
        )
        with pytest.raises(BatchRejectedError) as refused:
            await handle.wait()

    assert [r.status for r in answer.results] == [200, 200]
    assert [(b.credit_type, b.balance) for b in balances.balances] == [("chat", 7)]
    assert handle.command_id is not None
    assert isinstance(refused.value.failed, InsufficientCreditsError)
