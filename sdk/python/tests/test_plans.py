"""Products (what a provider's price or product buys) and users' auto top-up settings, with Tally
and AsyncTally, against the real stack."""

from __future__ import annotations

import time
import uuid

import pytest
from helpers import API_KEY, BASE_URL, unique_user

from tally_credits import AsyncTally, BadRequestError, NotFoundError, Tally


def test_a_product_is_put_listed_replaced_and_deleted_and_a_subscription_cannot_expire(tally: Tally) -> None:
    price = f"price_{uuid.uuid4().hex}"
    polar = str(uuid.uuid4())

    pack = tally.products.put(provider="stripe", product_id=price, credits=500, mode="one_time", expires_in_days=30)
    monthly = tally.products.put(
        provider="polar", product_id=polar, credits=1000, credit_type="image", mode="subscription"
    )
    mine = [(p.provider, p.product_id) for p in tally.products.list() if p.product_id in (price, polar)]
    replaced = tally.products.put(provider="stripe", product_id=price, credits=600, mode="one_time")

    assert (pack.provider, pack.product_id, pack.credits, pack.credit_type, pack.mode, pack.expires_in_days) == (
        "stripe",
        price,
        500,
        "credits",
        "one_time",
        30,
    )
    assert (monthly.credit_type, monthly.mode, monthly.expires_in_days) == ("image", "subscription", None)
    assert mine == [("polar", polar), ("stripe", price)]
    assert (replaced.credits, replaced.expires_in_days) == (600, None)
    assert [p.credits for p in tally.products.list() if p.product_id == price] == [600]
    with pytest.raises(BadRequestError) as refused:
        tally.products.put(provider="stripe", product_id=price, credits=600, mode="subscription", expires_in_days=30)
    assert refused.value.status == 400

    tally.products.delete(provider="stripe", product_id=price)
    tally.products.delete(provider="polar", product_id=polar)
    assert [p for p in tally.products.list() if p.product_id in (price, polar)] == []
    with pytest.raises(NotFoundError) as unknown:
        tally.products.delete(provider="stripe", product_id=price)
    assert (unknown.value.status, unknown.value.code) == (404, "not_found")


def test_auto_topup_is_set_read_back_with_no_attempt_yet_and_deleted(tally: Tally) -> None:
    user = unique_user()
    credit_type = f"t{time.time_ns()}"

    set_ = tally.credits.auto_topup.set(
        user_id=user,
        credit_type=credit_type,
        enabled=True,
        threshold=100,
        credits=1000,
        amount=999,
        currency="usd",
        stripe_customer_id="cus_test123",
        stripe_payment_method_id="pm_test123",
        max_per_month=5,
    )
    read = tally.credits.auto_topup.get(user_id=user, credit_type=credit_type)

    assert read == set_
    assert (read.user_id, read.credit_type, read.enabled, read.threshold, read.credits, read.amount) == (
        user,
        credit_type,
        True,
        100,
        1000,
        999,
    )
    assert (read.currency, read.stripe_customer_id, read.stripe_payment_method_id, read.max_per_month) == (
        "usd",
        "cus_test123",
        "pm_test123",
        5,
    )
    assert (read.consecutive_failures, read.disabled_reason, read.last_attempt) == (0, None, None)
    with pytest.raises(NotFoundError):
        tally.credits.auto_topup.get(user_id=user)

    tally.credits.auto_topup.delete(user_id=user, credit_type=credit_type)
    with pytest.raises(NotFoundError) as gone:
        tally.credits.auto_topup.get(user_id=user, credit_type=credit_type)
    assert (gone.value.status, gone.value.code) == (404, "not_found")
    with pytest.raises(NotFoundError):
        tally.credits.auto_topup.delete(user_id=user, credit_type=credit_type)
    with pytest.raises(BadRequestError):
        tally.credits.auto_topup.set(
            user_id=user,
            enabled=True,
            threshold=0,
            credits=1000,
            amount=999,
            currency="usd",
            stripe_customer_id="cus_test123",
            stripe_payment_method_id="pm_test123",
        )


@pytest.mark.anyio
async def test_async_tally_has_the_same_products_and_auto_topup_calls_awaited() -> None:
    async with AsyncTally(api_key=API_KEY, base_url=BASE_URL) as tally:
        price = f"price_{uuid.uuid4().hex}"
        product = await tally.products.put(provider="stripe", product_id=price, credits=5, mode="subscription")
        assert (product.mode, product.expires_in_days) == ("subscription", None)
        assert [p.credits for p in await tally.products.list() if p.product_id == price] == [5]
        await tally.products.delete(provider="stripe", product_id=price)
        with pytest.raises(NotFoundError):
            await tally.products.delete(provider="stripe", product_id=price)

        user = unique_user()
        settings = await tally.credits.auto_topup.set(
            user_id=user,
            enabled=False,
            threshold=10,
            credits=100,
            amount=500,
            currency="eur",
            stripe_customer_id="cus_test123",
            stripe_payment_method_id="pm_test123",
        )
        assert (settings.credit_type, settings.max_per_month, settings.enabled) == ("credits", 10, False)
        read = await tally.credits.auto_topup.get(user_id=user)
        assert (read.consecutive_failures, read.last_attempt) == (0, None)
        await tally.credits.auto_topup.delete(user_id=user)
        with pytest.raises(NotFoundError):
            await tally.credits.auto_topup.get(user_id=user)
