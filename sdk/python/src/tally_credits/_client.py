"""`Tally`: the synchronous client (httpx.Client). `AsyncTally` in `_async_client` mirrors it."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator, Mapping, Sequence
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


class Tally:
    """The Tally client: `tally.credits`, `tally.commands`, `tally.webhooks`,
    `tally.webhook_endpoints`, `tally.webhook_deliveries`, `tally.events`, `tally.products`.

    `api_key` and `base_url` default to the `TALLY_API_KEY` and `TALLY_BASE_URL` environment
    variables (explicit arguments win). `timeout` (seconds, default 30) is how long each attempt
    may wait to connect and for the answer; `max_retries` (default 2) counts retries after the
    first attempt. `http_client` replaces the httpx.Client the SDK would make (it is then yours
    to close). Use the client as a context manager, or call `close()`, to release its connections.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = core.DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = core.DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._config = core.Config.resolve(api_key, base_url, timeout, max_retries)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()
        self.credits = Credits(self)
        self.commands = Commands(self)
        self.webhooks = Webhooks(self)
        self.webhook_endpoints = WebhookEndpoints(self)
        self.webhook_deliveries = WebhookDeliveries(self)
        self.events = Events(self)
        self.products = Products(self)

    def close(self) -> None:
        """Closes the connections (not those of an `http_client` you passed)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tally(base_url={self._config.base_url!r})"

    # --- running plans ------------------------------------------------------------------------

    def _run(self, plan: core.Plan[T]) -> T:
        outcome: core.Outcome = None
        while True:
            try:
                step = plan.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, core.Sleep):
                time.sleep(step.seconds)
                outcome = None
            else:
                outcome = self._attempt(step)

    def _attempt(self, request: core.Request) -> core.Answer | ConnectionError:
        try:
            response = self._http.request(
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

    def _read(self, model: type[M], path: str, query: Mapping[str, object]) -> M:
        return self._run(core.read(self._config, model, path, query))

    def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: Mapping[str, object] | None = None,
    ) -> M:
        return self._run(core.call(self._config, model, method, path, query=query, body=body))

    def _write(
        self,
        model: type[M],
        path: str,
        params: Mapping[str, object],
        idempotency_key: str | None,
        respond_async: bool,
    ) -> M | CommandHandle[M]:
        if respond_async:
            plan = core.submit(self._config, model, path, params, idempotency_key, respond_async=True)
            return CommandHandle(self, model, self._run(plan))
        return self._run(core.write(self._config, model, path, params, idempotency_key))


class CommandHandle(core.HandleState[M]):
    """A write sent with `respond_async=True`: the command is durable; `wait()` for its result.

    `command_id` and `status_url` are None when the server answered with the command's final
    result at once (a retry, or a repeated idempotency key, after the command had finished);
    `wait()` then returns that result.
    """

    def __init__(self, client: Tally, model: type[M], outcome: M | core.Accepted) -> None:
        super().__init__(model, outcome)
        self._client = client

    def wait(
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
        return self._client._run(core.wait(self._client._config, self._model, self._outcome, timeout, poll_interval))


class BatchHandle(core.HandleState[BatchResponse]):
    """A batch sent with `respond_async=True`: durable; `wait()` for its results.

    An atomic batch is one command (`command_id`, `status_url`); a batch that is not is one
    command per operation, and `command_id` and `status_url` are None.
    """

    def __init__(self, client: Tally, operations: Sequence[Operation], outcome: BatchResponse | core.Accepted) -> None:
        super().__init__(BatchResponse, outcome)
        self._client = client
        self._operations = list(operations)

    def wait(
        self,
        *,
        timeout: float = core.WAIT_DEFAULT_TIMEOUT_SECONDS,
        poll_interval: float = core.WAIT_DEFAULT_POLL_SECONDS,
    ) -> BatchResult:
        """Waits until every operation is applied or refused: the results the synchronous call
        would have returned (an atomic batch refused raises BatchRejectedError)."""
        plan = core.batch(self._client._config, self._operations, self._outcome, timeout, poll_interval)
        return self._client._run(plan)


class Credits:
    """`tally.credits`: add, deduct, refund, hold, capture, release, batch; balance(s), history,
    holds.

    Writes take the API's fields as keyword arguments, plus `idempotency_key=` (default: a fresh
    UUID per call, the same on each of its retries) and `respond_async=True` (answer as soon as
    the command is durable, with a CommandHandle to wait on).
    """

    def __init__(self, client: Tally) -> None:
        self._client = client
        self.alerts = CreditAlerts(client)
        self.auto_topup = CreditAutoTopup(client)

    @overload
    def add(
        self, *, idempotency_key: str | None = None, respond_async: Literal[False] = False, **params: Unpack[AddRequest]
    ) -> WriteResponse: ...
    @overload
    def add(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[AddRequest]
    ) -> CommandHandle[WriteResponse]: ...
    def add(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[AddRequest]
    ) -> WriteResponse | CommandHandle[WriteResponse]:
        """`POST /credits/add`: `user_id`, `amount`, and optionally `description`, `metadata`,
        `expires_at` or `expires_in_seconds`."""
        return self._client._write(WriteResponse, "/credits/add", params, idempotency_key, respond_async)

    @overload
    def deduct(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[DeductRequest],
    ) -> WriteResponse: ...
    @overload
    def deduct(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[DeductRequest]
    ) -> CommandHandle[WriteResponse]: ...
    def deduct(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[DeductRequest]
    ) -> WriteResponse | CommandHandle[WriteResponse]:
        """`POST /credits/deduct`: `user_id`, `amount`, and optionally `description`, `metadata`.
        InsufficientCreditsError (402) when the user's available credits are fewer."""
        return self._client._write(WriteResponse, "/credits/deduct", params, idempotency_key, respond_async)

    @overload
    def refund(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[RefundRequest],
    ) -> RefundResponse: ...
    @overload
    def refund(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[RefundRequest]
    ) -> CommandHandle[RefundResponse]: ...
    def refund(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[RefundRequest]
    ) -> RefundResponse | CommandHandle[RefundResponse]:
        """`POST /credits/refund`: `ledger_id`, and optionally `amount` (default: all that is left),
        `description`, `metadata`."""
        return self._client._write(RefundResponse, "/credits/refund", params, idempotency_key, respond_async)

    @overload
    def hold(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[HoldRequest],
    ) -> HoldResponse: ...
    @overload
    def hold(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[HoldRequest]
    ) -> CommandHandle[HoldResponse]: ...
    def hold(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[HoldRequest]
    ) -> HoldResponse | CommandHandle[HoldResponse]:
        """`POST /credits/hold`: reserve `amount` of `user_id`'s credits (`expires_in_seconds`,
        default 900), to capture or release later."""
        return self._client._write(HoldResponse, "/credits/hold", params, idempotency_key, respond_async)

    @overload
    def capture(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[CaptureRequest],
    ) -> CaptureResponse: ...
    @overload
    def capture(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[CaptureRequest]
    ) -> CommandHandle[CaptureResponse]: ...
    def capture(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[CaptureRequest]
    ) -> CaptureResponse | CommandHandle[CaptureResponse]:
        """`POST /credits/capture`: charge `amount` (default: all held) of hold `hold_id` and
        release the rest."""
        return self._client._write(CaptureResponse, "/credits/capture", params, idempotency_key, respond_async)

    @overload
    def release(
        self,
        *,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
        **params: Unpack[ReleaseRequest],
    ) -> ReleaseResponse: ...
    @overload
    def release(
        self, *, idempotency_key: str | None = None, respond_async: Literal[True], **params: Unpack[ReleaseRequest]
    ) -> CommandHandle[ReleaseResponse]: ...
    def release(
        self, *, idempotency_key: str | None = None, respond_async: bool = False, **params: Unpack[ReleaseRequest]
    ) -> ReleaseResponse | CommandHandle[ReleaseResponse]:
        """`POST /credits/release`: release all of hold `hold_id`."""
        return self._client._write(ReleaseResponse, "/credits/release", params, idempotency_key, respond_async)

    @overload
    def batch(
        self,
        *,
        operations: Sequence[Operation],
        atomic: bool = False,
        idempotency_key: str | None = None,
        respond_async: Literal[False] = False,
    ) -> BatchResult: ...
    @overload
    def batch(
        self,
        *,
        operations: Sequence[Operation],
        atomic: bool = False,
        idempotency_key: str | None = None,
        respond_async: Literal[True],
    ) -> BatchHandle: ...
    def batch(
        self,
        *,
        operations: Sequence[Operation],
        atomic: bool = False,
        idempotency_key: str | None = None,
        respond_async: bool = False,
    ) -> BatchResult | BatchHandle:
        """`POST /credits/batch`: 1 to 1,000 `operations` (`{"op": "add", ...that call's
        arguments}`), each applied as if sent alone; or, `atomic=True`, one user's adds, deducts
        and holds all or none (BatchRejectedError when refused). A result per operation; one the
        server answered 202 is waited for, like a write."""
        config = self._client._config
        if respond_async:
            plan = core.submit_batch(
                config, operations, atomic=atomic, idempotency_key=idempotency_key, respond_async=True
            )
            return BatchHandle(self._client, operations, self._client._run(plan))
        return self._client._run(core.run_batch(config, operations, atomic=atomic, idempotency_key=idempotency_key))

    def balance(self, **query: Unpack[BalanceQuery]) -> BalanceResponse:
        """`GET /credits/balance`: `balance`, `held`, `available` and `next_expiry` of `user_id`,
        of one `credit_type` (default `credits`)."""
        return self._client._read(BalanceResponse, "/credits/balance", query)

    def balances(self, **query: Unpack[BalancesQuery]) -> BalancesResponse:
        """`GET /credits/balances`: every credit type `user_id` has, ordered by type."""
        return self._client._read(BalancesResponse, "/credits/balances", query)

    def history(self, **query: Unpack[HistoryQuery]) -> HistoryResponse:
        """One page of `GET /credits/history`, newest first; pass `next_cursor` as `cursor` for
        the next."""
        return self._client._read(HistoryResponse, "/credits/history", query)

    def history_all(self, **query: Unpack[HistoryQuery]) -> Iterator[HistoryEntry]:
        """Every history entry of `user_id`, newest first, following `next_cursor` page by page
        (`limit` per page, default 200)."""
        page_query = core.history_all_query(query)
        while True:
            page = self._client._read(HistoryResponse, "/credits/history", page_query)
            yield from page.entries
            if page.next_cursor is None:
                return
            page_query["cursor"] = page.next_cursor

    def holds(self, **query: Unpack[HoldsQuery]) -> HoldsResponse:
        """`GET /credits/holds`: a user's holds, optionally by `status`."""
        return self._client._read(HoldsResponse, "/credits/holds", query)


class Commands:
    """`tally.commands`: the state of a write."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def get(self, *, command_id: str) -> CommandStatus:
        """`GET /commands/{command_id}`: pending, applied or rejected, with the synchronous
        call's answer (`http_status`, `result`)."""
        return self._client._read(CommandStatus, core.command_path(command_id), {})


class Webhooks:
    """`tally.webhooks`: the payment webhooks Tally received (to verify the events Tally sends,
    see `tally_credits.webhooks.verify`)."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def events(self, **query: Unpack[WebhookEventsQuery]) -> WebhookEventsResponse:
        """`GET /webhooks/events`: received payment webhooks, newest first, with their outcome."""
        return self._client._read(WebhookEventsResponse, "/webhooks/events", query)


class WebhookEndpoints:
    """`tally.webhook_endpoints`: the URLs Tally sends the app's events to."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def create(self, **params: Unpack[CreateEndpointRequest]) -> Endpoint:
        """`POST /webhook_endpoints`: `url`, and optionally `events` (default `["*"]`: every
        type) and `description`. The answer's `secret` (`whsec_...`) is shown only now."""
        return self._client._call(Endpoint, "POST", "/webhook_endpoints", body=params)

    def list(self) -> EndpointsResponse:
        """`GET /webhook_endpoints`: every endpoint of the app, oldest first, without secrets."""
        return self._client._call(EndpointsResponse, "GET", "/webhook_endpoints")

    def get(self, *, endpoint_id: str) -> Endpoint:
        """`GET /webhook_endpoints/{id}`."""
        return self._client._call(Endpoint, "GET", core.endpoint_path(endpoint_id))

    def update(self, *, endpoint_id: str, **params: Unpack[UpdateEndpointRequest]) -> Endpoint:
        """`PATCH /webhook_endpoints/{id}`: `url`, `events`, `description` (None clears it) or
        `enabled` (True also forgets the failures that disabled it)."""
        return self._client._call(Endpoint, "PATCH", core.endpoint_path(endpoint_id), body=params)

    def delete(self, *, endpoint_id: str) -> None:
        """`DELETE /webhook_endpoints/{id}`: its pending deliveries are cancelled."""
        self._client._run(core.call_no_content(self._client._config, "DELETE", core.endpoint_path(endpoint_id)))

    def rotate_secret(self, *, endpoint_id: str) -> SecretResponse:
        """`POST /webhook_endpoints/{id}/rotate_secret`: the new secret (shown only now); for
        24 h deliveries are signed with both."""
        return self._client._call(SecretResponse, "POST", core.endpoint_path(endpoint_id, "/rotate_secret"))

    def test(self, *, endpoint_id: str) -> TestResponse:
        """`POST /webhook_endpoints/{id}/test`: a `ping` event to this endpoint only."""
        return self._client._call(TestResponse, "POST", core.endpoint_path(endpoint_id, "/test"))

    def deliveries(self, *, endpoint_id: str, **query: Unpack[DeliveriesQuery]) -> DeliveriesResponse:
        """`GET /webhook_endpoints/{id}/deliveries`: one page, newest first, optionally by
        `status`; pass `next_cursor` as `cursor` for the next."""
        path = core.endpoint_path(endpoint_id, "/deliveries")
        return self._client._call(DeliveriesResponse, "GET", path, query=query)


class WebhookDeliveries:
    """`tally.webhook_deliveries`: one event sent to one endpoint."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def redeliver(self, *, delivery_id: str) -> Delivery:
        """`POST /webhook_deliveries/{id}/redeliver`: the same event (same `webhook-id`) is sent
        again now, as a new attempt of this delivery."""
        return self._client._call(Delivery, "POST", core.delivery_path(delivery_id, "/redeliver"))


class Events:
    """`tally.events`: the app's events as its endpoints receive them (kept at least 30 days)."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def list(self, **query: Unpack[EventsQuery]) -> EventsResponse:
        """`GET /events`: one page, newest first, optionally by `type` and `user_id`."""
        return self._client._call(EventsResponse, "GET", "/events", query=query)

    def list_all(self, **query: Unpack[EventsQuery]) -> Iterator[EventEnvelope]:
        """Every event, newest first, following `next_cursor` page by page (`limit` per page,
        default 200)."""
        page_query = core.history_all_query(query)
        while True:
            page = self._client._call(EventsResponse, "GET", "/events", query=page_query)
            yield from page.events
            if page.next_cursor is None:
                return
            page_query["cursor"] = page.next_cursor

    def get(self, *, event_id: str) -> EventEnvelope:
        """`GET /events/{id}`."""
        return self._client._call(EventEnvelope, "GET", core.event_path(event_id))


class CreditAlerts:
    """`tally.credits.alerts`: the thresholds below which `balance.low` fires."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def set(self, **params: Unpack[AlertsRequest]) -> AlertsResponse:
        """`PUT /credits/alerts`: `thresholds`, for `credit_type` (default `credits`); without
        `user_id` the app's default, with it that user's own list (`[]`: no alerts for them)."""
        return self._client._call(AlertsResponse, "PUT", "/credits/alerts", body=params)

    def get(self, **query: Unpack[AlertsQuery]) -> EffectiveAlerts:
        """`GET /credits/alerts`: the list that applies to `user_id` (or the app's default) and
        its `source`: `user`, `app` or `none`."""
        return self._client._call(EffectiveAlerts, "GET", "/credits/alerts", query=query)

    def delete(self, **query: Unpack[AlertsQuery]) -> None:
        """`DELETE /credits/alerts`: drops `user_id`'s own list (the app's default applies
        again), or without `user_id` the app's default."""
        self._client._run(core.call_no_content(self._client._config, "DELETE", "/credits/alerts", query=query))


class CreditAutoTopup:
    """`tally.credits.auto_topup`: a user's saved card charged when `available` falls below
    a threshold, for more credits."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def set(self, **params: Unpack[AutoTopupRequest]) -> AutoTopup:
        """`PUT /credits/auto_topup`: creates or replaces `user_id`'s settings for `credit_type`
        (default `credits`): below `threshold`, charge `amount` (minor units of `currency`) to
        `stripe_payment_method_id` of `stripe_customer_id` for `credits` more, at most
        `max_per_month` times a month (default 10)."""
        return self._client._call(AutoTopup, "PUT", "/credits/auto_topup", body=params)

    def get(self, **query: Unpack[AutoTopupQuery]) -> AutoTopup:
        """`GET /credits/auto_topup`: `user_id`'s settings for `credit_type`, with
        `consecutive_failures` and `last_attempt`; NotFoundError when there are none."""
        return self._client._call(AutoTopup, "GET", "/credits/auto_topup", query=query)

    def delete(self, **query: Unpack[AutoTopupQuery]) -> None:
        """`DELETE /credits/auto_topup`: no more top-ups for `user_id` of `credit_type`;
        NotFoundError when there were none."""
        path = "/credits/auto_topup"
        self._client._run(core.call_no_content(self._client._config, "DELETE", path, query=query))


class Products:
    """`tally.products`: what each provider product (a Stripe Price, a Polar Product) buys."""

    def __init__(self, client: Tally) -> None:
        self._client = client

    def put(self, *, provider: str, product_id: str, **params: Unpack[ProductRequest]) -> Product:
        """`PUT /products/{provider}/{product_id}`: creates or replaces what the product buys.
        `provider` is `stripe` (`product_id` a Price id, `price_...`) or `polar` (a Product id);
        `credits` of `credit_type` (default `credits`), `mode` `one_time` (`expires_in_days`
        optional) or `subscription`."""
        return self._client._call(Product, "PUT", core.product_path(provider, product_id), body=params)

    def list(self) -> builtins.list[Product]:
        """`GET /products`: every product of the app, by provider then product id."""
        return self._client._call(ProductsResponse, "GET", "/products").products

    def delete(self, *, provider: str, product_id: str) -> None:
        """`DELETE /products/{provider}/{product_id}`: NotFoundError for an unknown one."""
        path = core.product_path(provider, product_id)
        self._client._run(core.call_no_content(self._client._config, "DELETE", path))
