"""Webhook endpoints, their deliveries, the events log and balance alerts, with Tally and
AsyncTally, against the real stack (which allows endpoints on 127.0.0.1)."""

from __future__ import annotations

import time

import pytest
from helpers import API_KEY, BASE_URL, unique_user

from tally_credits import AsyncTally, BadRequestError, NotFoundError, Tally

# Nothing listens there: these tests read what the API records.
RECEIVER = "http://127.0.0.1:9/tally-events"


def test_an_endpoint_is_created_with_its_secret_once_changed_rotated_and_deleted(tally: Tally) -> None:
    created = tally.webhook_endpoints.create(
        url=RECEIVER, events=["balance.low", "credits.added"], description="billing emails"
    )
    try:
        assert (created.secret or "").startswith("whsec_")
        assert created.events == ["balance.low", "credits.added"]
        listed = tally.webhook_endpoints.list().endpoints
        assert [(e.id, e.secret) for e in listed if e.id == created.id] == [(created.id, None)]
        assert tally.webhook_endpoints.get(endpoint_id=created.id).description == "billing emails"

        changed = tally.webhook_endpoints.update(endpoint_id=created.id, enabled=False, description=None)
        assert (changed.enabled, changed.description) == (False, None)
        rotated = tally.webhook_endpoints.rotate_secret(endpoint_id=created.id)
        assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
    finally:
        tally.webhook_endpoints.delete(endpoint_id=created.id)
    with pytest.raises(NotFoundError):
        tally.webhook_endpoints.get(endpoint_id=created.id)
    with pytest.raises(BadRequestError) as refused:
        tally.webhook_endpoints.create(url=RECEIVER, events=["balance.high"])
    assert (refused.value.body or {}).get("field") == "events"


def test_a_test_ping_is_an_event_and_a_delivery_that_can_be_redelivered(tally: Tally) -> None:
    endpoint = tally.webhook_endpoints.create(url=RECEIVER)
    try:
        event_id = tally.webhook_endpoints.test(endpoint_id=endpoint.id).event_id

        event = tally.events.get(event_id=event_id)
        assert (event.type, event.user_id, event.data) == ("ping", None, {})
        assert [e.id for e in tally.events.list_all(type="ping") if e.id == event_id] == [event_id]
        deliveries = tally.webhook_endpoints.deliveries(endpoint_id=endpoint.id).deliveries
        assert [(d.event_id, d.event_type) for d in deliveries] == [(event_id, "ping")]
        redelivered = tally.webhook_deliveries.redeliver(delivery_id=deliveries[0].id)
        assert (redelivered.id, redelivered.status) == (deliveries[0].id, "pending")
    finally:
        tally.webhook_endpoints.delete(endpoint_id=endpoint.id)


def test_alerts_the_apps_default_a_users_own_list_and_dropping_it(tally: Tally) -> None:
    user = unique_user()
    credit_type = f"t{time.time_ns()}"

    default = tally.credits.alerts.set(credit_type=credit_type, thresholds=[100, 1000, 100])
    tally.credits.alerts.set(user_id=user, credit_type=credit_type, thresholds=[])
    own = tally.credits.alerts.get(user_id=user, credit_type=credit_type)
    tally.credits.alerts.delete(user_id=user, credit_type=credit_type)
    after = tally.credits.alerts.get(user_id=user, credit_type=credit_type)

    assert (default.user_id, default.thresholds) == (None, [1000, 100])
    assert (own.source, own.thresholds) == ("user", [])
    assert (after.source, after.thresholds) == ("app", [1000, 100])
    tally.credits.alerts.delete(credit_type=credit_type)
    assert tally.credits.alerts.get(credit_type=credit_type).source == "none"


@pytest.mark.anyio
async def test_async_tally_has_the_same_calls_awaited() -> None:
    async with AsyncTally(api_key=API_KEY, base_url=BASE_URL) as tally:
        endpoint = await tally.webhook_endpoints.create(url=RECEIVER, events=["balance.low"])
        try:
            event_id = (await tally.webhook_endpoints.test(endpoint_id=endpoint.id)).event_id
            assert (await tally.events.get(event_id=event_id)).type == "ping"
            seen = [e.id async for e in tally.events.list_all(type="ping") if e.id == event_id]
            assert seen == [event_id]
            page = await tally.webhook_endpoints.deliveries(endpoint_id=endpoint.id, status="pending")
            delivery = await tally.webhook_deliveries.redeliver(delivery_id=page.deliveries[0].id)
            assert delivery.event_id == event_id
            updated = await tally.webhook_endpoints.update(endpoint_id=endpoint.id, events=["*"])
            assert updated.events == ["*"]
            assert (await tally.webhook_endpoints.rotate_secret(endpoint_id=endpoint.id)).secret
            assert any(e.id == endpoint.id for e in (await tally.webhook_endpoints.list()).endpoints)
        finally:
            await tally.webhook_endpoints.delete(endpoint_id=endpoint.id)
        with pytest.raises(NotFoundError):
            await tally.webhook_endpoints.get(endpoint_id=endpoint.id)
        user = unique_user()
        await tally.credits.alerts.set(user_id=user, thresholds=[5])
        assert (await tally.credits.alerts.get(user_id=user)).source == "user"
        await tally.credits.alerts.delete(user_id=user)
