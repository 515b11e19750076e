"""`AsyncTally`: the asyncio client (httpx.AsyncClient), `Tally` in `_client` with every call awaited."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar, Unpack, overload

import httpx

from . import _core as core
from ._batch import BatchResult, Operation
from ._generated import (
    AddRequest,
    AlertsQuery,
    AlertsRequest,
    AutoTopup,
    AutoTopupQuery,
    AutoTopupRequest,
    BalanceQuery,
    BalanceResponse,
    BalancesQuery,
    BalancesResponse,
    BatchResponse,
    CaptureRequest,
    CaptureResponse,
    CommandStatus,
    CreateEndpointRequest,
    DeductRequest,
    DeliveriesQuery,
    DeliveriesResponse,
    Delivery,
    EffectiveAlerts,
    Endpoint,
    EndpointsResponse,
    EventEnvelope,
    EventsQuery,
    EventsResponse,
    HistoryEntry,
    HistoryQuery,
    HistoryResponse,
    HoldRequest,
    HoldResponse,
    HoldsQuery,
    HoldsResponse,
    Product,
    ProductRequest,
    ProductsResponse,
    RefundRequest,
    RefundResponse,
    ReleaseRequest,
    ReleaseResponse,
    SecretResponse,
    TestResponse,
    UpdateEndpointRequest,
    WebhookEventsQuery,
    WebhookEventsResponse,
    WriteResponse,
)
from ._generated import Alerts as AlertsResponse
from ._model import Model
from .errors import ConnectionError

M = TypeVar("M", bound=Model)
T = TypeVar("T")


class AsyncTally:
    """The Tally client for asyncio: `tally.credits`, `tally.commands`, `tally.webhooks`,
    `tally.webhook_endpoints`, `tally.webhook_deliveries`, `tally.events`, `tally.products`, each
    call awaited.

    `api_key` and `base_url` default to the `TALLY_API_KEY` and `TALLY_BASE_URL` environment
    variables (explicit arguments win). `timeout` (seconds, default 30) is how long each attempt
    may wait to connect and for the answer; `max_retries` (default 2) counts retries after the
    first attempt. `http_client` replaces the httpx.AsyncClient the SDK would make (it is then
    yours to close). Use the client as an async context manager, or call `aclose()`, to release
    its connections.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = core.DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = core.DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._config = core.Config.resolve(api_key, base_url, timeout, max_retries)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()
        self.credits = AsyncCredits(self)
        self.commands = AsyncCommands(self)
        self.webhooks = AsyncWebhooks(self)
        self.webhook_endpoints = AsyncWebhookEndpoints(self)
        self.webhook_deliveries = AsyncWebhookDeliveries(self)
        self.events = AsyncEvents(self)
        self.products = AsyncProducts(self)

    async def aclose(self) -> None:
        """Closes the connections (not those of an `http_client` you passed)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncTally(base_url={self._config.base_url!r})"

    # --- running plans ------------------------------------------------------------------------

    async def _run(self, plan: core.Plan[T]) -> T:
        outcome: core.Outcome = None
        while True:
            try:
                step = plan.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, core.Sleep):
                await asyncio.sleep(step.seconds)
                outcome = None
            else:
                outcome = await self._attempt(step)

    async def _attempt(self, request: core.Request) -> core.Answer | ConnectionError:
        try:
            response = await self._http.request(
                request.method,
                request.url(self._config),
                params=request.query,
                content=request.body,
                headers=request.headers(self._config),
                timeout=self._config.timeout_seconds,
            )
        except httpx.TransportError as error:
            return core.connection_error(request, error)
        return core.Answer.of(response)

    async def _read(self, model: type[M], path: str, query: Mapping[str, object]) -> M:
        return await self._run(core.read(self._config, model, path, query))

    async def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: Mapping[str, object] | None = None,
    ) -> M:
        return await self._run(core.call(self._config, model, method, path, query=query, body=body))

    async def _write(
        self,
        model: type[M],
        path: str,
        params: Mapping[str, object],
        idempotency_key: str | None,
        respond_async: bool,
    ) -> M | AsyncCommandHandle[M]:
        if respond_async:
            plan = core.submit(self._config, model, path, params, idempotency_key, respond_async=True)
            return AsyncCommandHandle(self, model, await self._run(plan))
        return await self._run(core.write(self._config, model, path, params, idempotency_key))


class AsyncCommandHandle(core.HandleState[M]):
    """A write sent with `respond_async=True`: the command is durable; `await wait()` for its result.

    `command_id` and `status_url` are None when the server answered with the command's final
    result at once (a retry, or a repeated idempotency key, after the command had finished);
    `wait()` then returns that result.
    """

    def __init__(self, client: AsyncTally, model: type[M], outcome: M | core.Accepted) -> None:
        super().__init__(model, outcome)
        self._client = client

    async def wait(
        self,
        *,
        timeout: float = core.WAIT_DEFAULT_TIMEOUT_SECONDS,
        poll_interval: float = core.WAIT_DEFAULT_POLL_SECONDS,
    ) -> M:
        """Polls `/commands/{id}` until the command is applied (returns what the synchronous call
        would have) or rejected (raises its typed error, e.g. InsufficientCreditsError).
        WaitTimeoutError after `timeout` seconds; the first pause is `poll_interval`, doubling
        up to 1 s."""
        if not isinstance(self._outcome, core.Accepted):
            return self._outcome
        return await self._client._run(
            core.wait(self._client._config, self._model, self._outcome, timeout, poll_interval)
        )


class AsyncBatchHandle(core.HandleState[BatchResponse]):
    """A batch sent with `respond_async=True`: durable; `wait()` for its results.

    An atomic batch is one command (`command_id`, `status_url`); a batch that is not is one
    command per operation, and `command_id` and `status_url` are None.
    """

    def __init__(
        self, client: AsyncTally, operations: Sequence[Operation], outcome: BatchResponse | core.Accepted
    ) -> None:
        super().__init__(BatchResponse, outcome)
        self._client = client
        self._operations = list(operations)

    async def wait(
        self,
        *,
        timeout: float = core.WAIT_DEFAULT_TIMEOUT_SECONDS,
        poll_interval: float = core.WAIT_DEFAULT_POLL_SECONDS,
    ) -> BatchResult:
        """Waits until every operation is applied or refused: the results the synchronous call
        would have returned (an atomic batch refused raises BatchRejectedError)."""
        plan = core.batch(self._client._config, self._operations, self._outcome, timeout, poll_interval)
        return await self._client._run(plan)


class AsyncCredits:
    """`tally.credits` of AsyncTally: add, deduct, refund, hold, capture, release; balance, history, holds.

    Writes take the API's fields as keyword arguments, plus `idempotency_key=` (default: a fresh
    UUID per call, the same on each of its retries) and `respond_async=True` (answer as soon as
    the command is durable, with an AsyncCommandHandle to wait on).
    """

    def __init__(self, client: AsyncTally) -> None:
        self._client = client
        self.alerts = AsyncCreditAlerts(client)
        self.auto_topup = AsyncCreditAutoTopup(client)

    @overload
    async def add(
        self, *, idempotency_key: str | None = None, respond_async: Literal[False] = False, **params: Unpack[AddRequest]
    ) -> WriteResponse: ...
    @overload
    async def add(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[AddRequest]
    ) -> AsyncCommandHandle[WriteResponse]: ...
    async def add(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[AddRequest]
    ) -> WriteResponse | AsyncCommandHandle[WriteResponse]:
        """`POST /credits/add`: `user_id`, `amount`, and optionally `description`, `metadata`,
        `expires_at` or `expires_in_seconds`."""
        return await self._client._write(WriteResponse, "/credits/add", params, idempotency_key, respond_async)

    @overload
    async def deduct(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[DeductRequest],
    ) -> WriteResponse: ...
    @overload
    async def deduct(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[DeductRequest]
    ) -> AsyncCommandHandle[WriteResponse]: ...
    async def deduct(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[DeductRequest]
    ) -> WriteResponse | AsyncCommandHandle[WriteResponse]:
        """`POST /credits/deduct`: `user_id`, `amount`, and optionally `description`, `metadata`.
        InsufficientCreditsError (402) when the user's available credits are fewer."""
        return await self._client._write(WriteResponse, "/credits/deduct", params, idempotency_key, respond_async)

    @overload
    async def refund(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[RefundRequest],
    ) -> RefundResponse: ...
    @overload
    async def refund(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[RefundRequest]
    ) -> AsyncCommandHandle[RefundResponse]: ...
    async def refund(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[RefundRequest]
    ) -> RefundResponse | AsyncCommandHandle[RefundResponse]:
        """`POST /credits/refund`: `ledger_id`, and optionally `amount` (default: all that is left),
        `description`, `metadata`."""
        return await self._client._write(RefundResponse, "/credits/refund", params, idempotency_key, respond_async)

    @overload
    async def hold(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[HoldRequest],
    ) -> HoldResponse: ...
    @overload
    async def hold(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[HoldRequest]
    ) -> AsyncCommandHandle[HoldResponse]: ...
    async def hold(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[HoldRequest]
    ) -> HoldResponse | AsyncCommandHandle[HoldResponse]:
        """`POST /credits/hold`: reserve `amount` of `user_id`'s credits (`expires_in_seconds`,
        default 900), to capture or release later."""
        return await self._client._write(HoldResponse, "/credits/hold", params, idempotency_key, respond_async)

    @overload
    async def capture(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[CaptureRequest],
    ) -> CaptureResponse: ...
    @overload
    async def capture(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[CaptureRequest]
    ) -> AsyncCommandHandle[CaptureResponse]: ...
    async def capture(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[CaptureRequest]
    ) -> CaptureResponse | AsyncCommandHandle[CaptureResponse]:
        """`POST /credits/capture`: charge `amount` (default: all held) of hold `hold_id` and
        release the rest."""
        return await self._client._write(CaptureResponse, "/credits/capture", params, idempotency_key, respond_async)

    @overload
    async def release(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[ReleaseRequest],
    ) -> ReleaseResponse: ...
    @overload
    async def release(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[ReleaseRequest]
    ) -> AsyncCommandHandle[ReleaseResponse]: ...
    async def release(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[ReleaseRequest]
    ) -> ReleaseResponse | AsyncCommandHandle[ReleaseResponse]:
        """`POST /credits/release`: release all of hold `hold_id`."""
        return await self._client._write(ReleaseResponse, "/credits/release", params, idempotency_key, respond_async)

    @overload
    async def batch(
        self,
        *,
        operations: Sequence[Operation],
        atomic: bool = False,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
    ) -> BatchResult: ...
    @overload
    async def batch(
        self,
        *,
        operations: Sequence[Operation],
        atomic: bool = False,
        idempotency_key: str | None = None,
        respond_async: Literal[True],
    ) -> AsyncBatchHandle: ...
    async def batch(
        self,
        *,
        operations: Sequence[Operation],
        atomic: bool = False,
        idempotency_key: str | None = None,
        respond_async: bool = False,
    ) -> BatchResult | AsyncBatchHandle:
        """`POST /credits/batch`: 1 to 1,000 `operations` (`{"op": "add", ...that call's
        arguments}`), each applied as if sent alone; or, `atomic=True`, one user's adds, deducts
        and holds all or none (BatchRejectedError when refused). A result per operation; one the
        server answered 202 is waited for, like a write."""
        config = self._client._config
        if respond_async:
            plan = core.submit_batch(
                config, operations, atomic=atomic, idempotency_key=idempotency_key, respond_async=True
            )
            return AsyncBatchHandle(self._client, operations, await self._client._run(plan))
        return await self._client._run(
            core.run_batch(config, operations, atomic=atomic, idempotency_key=idempotency_key)
        )

    async def balance(self, **query: Unpack[BalanceQuery]) -> BalanceResponse:
        """`GET /credits/balance`: `balance`, `held`, `available` and `next_expiry` of `user_id`,
        of one `credit_type` (default `credits`)."""
        return await self._client._read(BalanceResponse, "/credits/balance", query)

    async def balances(self, **query: Unpack[BalancesQuery]) -> BalancesResponse:
        """`GET /credits/balances`: every credit type `user_id` has, ordered by type."""
        return await self._client._read(BalancesResponse, "/credits/balances", query)

    async def history(self, **query: Unpack[HistoryQuery]) -> HistoryResponse:
        """One page of `GET /credits/history`, newest first; pass `next_cursor` as `cursor` for
        the next."""
        return await self._client._read(HistoryResponse, "/credits/history", query)

    async def history_all(self, **query: Unpack[HistoryQuery]) -> AsyncIterator[HistoryEntry]:
        """Every history entry of `user_id`, newest first, following `next_cursor` page by page
        (`limit` per page, default 200)."""
        page_query = core.history_all_query(query)
        while True:
            page = await self._client._read(HistoryResponse, "/credits/history", page_query)
            for entry in page.entries:
                yield entry
            if page.next_cursor is None:
                return
            page_query["cursor"] = page.next_cursor

    async def holds(self, **query: Unpack[HoldsQuery]) -> HoldsResponse:
        """`GET /credits/holds`: a user's holds, optionally by `status`."""
        return await self._client._read(HoldsResponse, "/credits/holds", query)


class AsyncCommands:
    """`tally.commands` of AsyncTally: the state of a write."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def get(self, *, command_id: str) -> CommandStatus:
        """`GET /commands/{command_id}`: pending, applied or rejected, with the synchronous
        call's answer (`http_status`, `result`)."""
        return await self._client._read(CommandStatus, core.command_path(command_id), {})


class AsyncWebhooks:
    """`tally.webhooks` of AsyncTally: the payment webhooks Tally received (to verify the events Tally sends,
    see `tally_credits.webhooks.verify`)."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def events(self, **query: Unpack[WebhookEventsQuery]) -> WebhookEventsResponse:
        """`GET /webhooks/events`: received payment webhooks, newest first, with their outcome."""
        return await self._client._read(WebhookEventsResponse, "/webhooks/events", query)


class AsyncWebhookEndpoints:
    """`tally.webhook_endpoints` of AsyncTally: the URLs Tally sends the app's events to."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def create(self, **params: Unpack[CreateEndpointRequest]) -> Endpoint:
        """`POST /webhook_endpoints`: `url`, and optionally `events` (default `["*"]`: every
        type) and `description`. The answer's `secret` (`whsec_...`) is shown only now."""
        return await self._client._call(Endpoint, "POST", "/webhook_endpoints", body=params)

    async def list(self) -> EndpointsResponse:
        """`GET /webhook_endpoints`: every endpoint of the app, oldest first, without secrets."""
        return await self._client._call(EndpointsResponse, "GET", "/webhook_endpoints")

    async def get(self, *, endpoint_id: str) -> Endpoint:
        """`GET /webhook_endpoints/{id}`."""
        return await self._client._call(Endpoint, "GET", core.endpoint_path(endpoint_id))

    async def update(self, *, endpoint_id: str, **params: Unpack[UpdateEndpointRequest]) -> Endpoint:
        """`PATCH /webhook_endpoints/{id}`: `url`, `events`, `description` (None clears it) or
        `enabled` (True also forgets the failures that disabled it)."""
        return await self._client._call(Endpoint, "PATCH", core.endpoint_path(endpoint_id), body=params)

    async def delete(self, *, endpoint_id: str) -> None:
        """`DELETE /webhook_endpoints/{id}`: its pending deliveries are cancelled."""
        await self._client._run(core.call_no_content(self._client._config, "DELETE", core.endpoint_path(endpoint_id)))

    async def rotate_secret(self, *, endpoint_id: str) -> SecretResponse:
        """`POST /webhook_endpoints/{id}/rotate_secret`: the new secret (shown only now); for
        24 h deliveries are signed with both."""
        return await self._client._call(SecretResponse, "POST", core.endpoint_path(endpoint_id, "/rotate_secret"))

    async def test(self, *, endpoint_id: str) -> TestResponse:
        """`POST /webhook_endpoints/{id}/test`: a `ping` event to this endpoint only."""
        return await self._client._call(TestResponse, "POST", core.endpoint_path(endpoint_id, "/test"))

    async def deliveries(self, *, endpoint_id: str, **query: Unpack[DeliveriesQuery]) -> DeliveriesResponse:
        """`GET /webhook_endpoints/{id}/deliveries`: one page, newest first, optionally by
        `status`; pass `next_cursor` as `cursor` for the next."""
        path = core.endpoint_path(endpoint_id, "/deliveries")
        return await self._client._call(DeliveriesResponse, "GET", path, query=query)


class AsyncWebhookDeliveries:
    """`tally.webhook_deliveries` of AsyncTally: one event sent to one endpoint."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def redeliver(self, *, delivery_id: str) -> Delivery:
        """`POST /webhook_deliveries/{id}/redeliver`: the same event (same `webhook-id`) is sent
        again now, as a new attempt of this delivery."""
        return await self._client._call(Delivery, "POST", core.delivery_path(delivery_id, "/redeliver"))


class AsyncEvents:
    """`tally.events` of AsyncTally: the app's events as its endpoints receive them (kept at least 30 days)."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def list(self, **query: Unpack[EventsQuery]) -> EventsResponse:
        """`GET /events`: one page, newest first, optionally by `type` and `user_id`."""
        return await self._client._call(EventsResponse, "GET", "/events", query=query)

    async def list_all(self, **query: Unpack[EventsQuery]) -> AsyncIterator[EventEnvelope]:
        """Every event, newest first, following `next_cursor` page by page (`limit` per page,
        default 200)."""
        page_query = core.history_all_query(query)
        while True:
            page = await self._client._call(EventsResponse, "GET", "/events", query=page_query)
            for event in page.events:
                yield event
            if page.next_cursor is None:
                return
            page_query["cursor"] = page.next_cursor

    async def get(self, *, event_id: str) -> EventEnvelope:
        """`GET /events/{id}`."""
        return await self._client._call(EventEnvelope, "GET", core.event_path(event_id))


class AsyncCreditAlerts:
    """`tally.credits.alerts` of AsyncTally: the thresholds below which `balance.low` fires."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def set(self, **params: Unpack[AlertsRequest]) -> AlertsResponse:
        """`PUT /credits/alerts`: `thresholds`, for `credit_type` (default `credits`); without
        `user_id` the app's default, with it that user's own list (`[]`: no alerts for them)."""
        return await self._client._call(AlertsResponse, "PUT", "/credits/alerts", body=params)

    async def get(self, **query: Unpack[AlertsQuery]) -> EffectiveAlerts:
        """`GET /credits/alerts`: the list that applies to `user_id` (or the app's default) and
        its `source`: `user`, `app` or `none`."""
        return await self._client._call(EffectiveAlerts, "GET", "/credits/alerts", query=query)

    async def delete(self, **query: Unpack[AlertsQuery]) -> None:
        """`DELETE /credits/alerts`: drops `user_id`'s own list (the app's default applies
        again), or without `user_id` the app's default."""
        await self._client._run(core.call_no_content(self._client._config, "DELETE", "/credits/alerts", query=query))


class AsyncCreditAutoTopup:
    """`tally.credits.auto_topup` of AsyncTally: a user's saved card charged when `available`
    falls below a threshold, for more credits."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def set(self, **params: Unpack[AutoTopupRequest]) -> AutoTopup:
        """`PUT /credits/auto_topup`: creates or replaces `user_id`'s settings for `credit_type`
        (default `credits`): below `threshold`, charge `amount` (minor units of `currency`) to
        `stripe_payment_method_id` of `stripe_customer_id` for `credits` more, at most
        `max_per_month` times a month (default 10)."""
        return await self._client._call(AutoTopup, "PUT", "/credits/auto_topup", body=params)

    async def get(self, **query: Unpack[AutoTopupQuery]) -> AutoTopup:
        """`GET /credits/auto_topup`: `user_id`'s settings for `credit_type`, with
        `consecutive_failures` and `last_attempt`; NotFoundError when there are none."""
        return await self._client._call(AutoTopup, "GET", "/credits/auto_topup", query=query)

    async def delete(self, **query: Unpack[AutoTopupQuery]) -> None:
        """`DELETE /credits/auto_topup`: no more top-ups for `user_id` of `credit_type`;
        NotFoundError when there were none."""
        path = "/credits/auto_topup"
        await self._client._run(core.call_no_content(self._client._config, "DELETE", path, query=query))


class AsyncProducts:
    """`tally.products` of AsyncTally: what each provider product (a Stripe Price, a Polar Product) buys."""

    def __init__(self, client: AsyncTally) -> None:
        self._client = client

    async def put(self, *, provider: str, product_id: str, **params: Unpack[ProductRequest]) -> Product:
        """`PUT /products/{provider}/{product_id}`: creates or replaces what the product buys.
        `provider` is `stripe` (`product_id` a Price id, `price_...`) or `polar` (a Product id);
        `credits` of `credit_type` (default `credits`), `mode` `one_time` (`expires_in_days`
        optional) or `subscription`."""
        return await self._client._call(Product, "PUT", core.product_path(provider, product_id), body=params)

    async def list(self) -> builtins.list[Product]:
        """`GET /products`: every product of the app, by provider then product id."""
        return (await self._client._call(ProductsResponse, "GET", "/products")).products

    async def delete(self, *, provider: str, product_id: str) -> None:
        """`DELETE /products/{provider}/{product_id}`: NotFoundError for an unknown one."""
        path = core.product_path(provider, product_id)
        await self._client._run(core.call_no_content(self._client._config, "DELETE", path))
