"""What `Tally` and `AsyncTally` share: requests, the retry policy, waiting on commands.

Each piece of logic is written once, as a generator (a *plan*) that yields what to do next, a
`Request` to send or a `Sleep`, and is sent what came of it: an `Answer`, a `ConnectionError`,
or None after a sleep. `Tally` runs plans with httpx.Client and time.sleep, `AsyncTally` with
httpx.AsyncClient and asyncio.sleep; so both retry, back off and wait exactly alike.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar, cast
from urllib.parse import quote

import httpx

from . import __version__
from ._batch import (
    RESULTS,
    AddResult,
    BatchResult,
    CaptureResult,
    DeductResult,
    HoldResult,
    Operation,
    OperationResult,
    RefundResult,
    ReleaseResult,
)
from ._generated import (
    AcceptedResponse,
    BatchResponse,
    CaptureResponse,
    CommandStatus,
    HoldResponse,
    RefundResponse,
    ReleaseResponse,
    WriteResponse,
)
from ._model import Model
from .errors import ConnectionError, TallyError, WaitTimeoutError, error_from_answer

# Limits: each one named, so nothing waits or retries forever.
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RETRIES = 2
# First retry pause; doubled per retry, capped, then jittered down by up to half.
RETRY_BASE_DELAY_SECONDS = 0.25
RETRY_MAX_DELAY_SECONDS = 8.0
# A Retry-After longer than this is not waited out: the error is raised instead.
RETRY_AFTER_MAX_SECONDS = 60.0
WAIT_DEFAULT_TIMEOUT_SECONDS = 60.0
# First pause between polls of a command; doubled up to WAIT_MAX_POLL_SECONDS.
WAIT_DEFAULT_POLL_SECONDS = 0.05
WAIT_MAX_POLL_SECONDS = 1.0
# Page size `history_all` asks for (the API's maximum).
HISTORY_ALL_PAGE_SIZE = 200

USER_AGENT = f"tally-credits-sdk-python/{__version__}"

M = TypeVar("M", bound=Model)
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """A client's settings, resolved once."""

    base_url: str
    api_key: str | None
    timeout_seconds: float
    max_retries: int

    @classmethod
    def resolve(cls, api_key: str | None, base_url: str | None, timeout: float, max_retries: int) -> Config:
        """Explicit arguments win; `TALLY_API_KEY` and `TALLY_BASE_URL` fill in the rest."""
        if base_url is None:
            base_url = os.environ.get("TALLY_BASE_URL")
        if not base_url:
            raise ValueError("tally-credits-sdk: no base_url; pass base_url= or set TALLY_BASE_URL")
        if api_key is None:
            api_key = os.environ.get("TALLY_API_KEY")
        if max_retries < 0:
            raise ValueError(f"tally-credits-sdk: max_retries must be 0 or more, not {max_retries}")
        if timeout <= 0:
            raise ValueError(f"tally-credits-sdk: timeout must be positive, not {timeout}")
        return cls(base_url.rstrip("/"), api_key or None, float(timeout), max_retries)


@dataclass(frozen=True)
class Request:
    """One HTTP request, sent as often as the retry policy says."""

    method: str
    path: str
    query: Mapping[str, str]
    body: bytes | None = None
    # Writes only: sent as Idempotency-Key, the same on every attempt.
    idempotency_key: str | None = None
    respond_async: bool = False

    def url(self, config: Config) -> str:
        return config.base_url + self.path

    def headers(self, config: Config) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        if self.respond_async:
            headers["Prefer"] = "respond-async"
        return headers


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, its JSON body (None when empty or not JSON), Retry-After."""

    status: int
    body: Any
    retry_after: str | None

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        try:
            body = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        return cls(response.status_code, body, response.headers.get("retry-after"))


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Accepted:
    """A write the server answered 202: durable, and applied later; wait for its result."""

    command_id: str
    status_url: str
    idempotency_key: str


Step: TypeAlias = Request | Sleep
Outcome: TypeAlias = Answer | ConnectionError | None
Plan: TypeAlias = Generator[Step, Outcome, T]


def connection_error(request: Request, error: httpx.TransportError) -> ConnectionError:
    """No answer to one attempt: a timeout or a failed or dropped connection."""
    if isinstance(error, httpx.TimeoutException):
        message, code = f"{request.method} {request.path}: no answer in time ({error!r})", "timeout"
    else:
        message, code = f"{request.method} {request.path}: connection failed ({error!r})", "connection_error"
    failure = ConnectionError(message, status=0, code=code, idempotency_key=request.idempotency_key)
    failure.__cause__ = error
    return failure


# --- plans ------------------------------------------------------------------------------------


def send(config: Config, request: Request) -> Plan[Answer]:
    """Sends `request`, retrying what is safe to retry; returns a 2xx answer or raises."""
    attempt = 0
    while True:
        outcome = yield request
        retry_after_seconds: float | None = None
        if isinstance(outcome, Answer):
            if 200 <= outcome.status < 300:
                return outcome
            retry_after_seconds = parse_retry_after(outcome.retry_after)
            failure: TallyError = error_from_answer(
                outcome.status,
                outcome.body,
                idempotency_key=request.idempotency_key,
                retry_after_seconds=retry_after_seconds,
            )
            if not is_retryable(failure):
                raise failure
        else:
            assert outcome is not None, "a Request is answered with an Answer or a ConnectionError"
            failure = outcome
        if attempt >= config.max_retries:
            raise failure
        if retry_after_seconds is not None and retry_after_seconds > RETRY_AFTER_MAX_SECONDS:
            raise failure
        yield Sleep(max(backoff_seconds(attempt), retry_after_seconds or 0.0))
        attempt += 1


def read(config: Config, model: type[M], path: str, query: Mapping[str, object]) -> Plan[M]:
    """A GET: its answer as `model`."""
    answer = yield from send(config, Request("GET", path, encode_query(query)))
    return parse(model, answer.body)


def submit(
    config: Config,
    model: type[M],
    path: str,
    params: Mapping[str, object],
    idempotency_key: str | None,
    *,
    respond_async: bool,
) -> Plan[M | Accepted]:
    """POSTs a write: its result, or `Accepted` when the server answered 202."""
    key = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
    request = Request("POST", path, {}, encode_body(params), key, respond_async)
    answer = yield from send(config, request)
    if answer.status == 202:
        accepted = parse(AcceptedResponse, answer.body)
        return Accepted(accepted.command_id, accepted.status_url, key)
    return parse(model, answer.body)


def write(
    config: Config, model: type[M], path: str, params: Mapping[str, object], idempotency_key: str | None
) -> Plan[M]:
    """A synchronous write: its result. A 202 (the result took longer than the server's sync
    timeout) means the command is durable, so its outcome is waited for."""
    outcome = yield from submit(config, model, path, params, idempotency_key, respond_async=False)
    if isinstance(outcome, Accepted):
        return (yield from wait(config, model, outcome, WAIT_DEFAULT_TIMEOUT_SECONDS, WAIT_DEFAULT_POLL_SECONDS))
    return outcome


def call(
    config: Config,
    model: type[M],
    method: str,
    path: str,
    *,
    query: Mapping[str, object] | None = None,
    body: Mapping[str, object] | None = None,
) -> Plan[M]:
    """Any call that is not a ledger write (PUT, PATCH, a POST to an endpoint, ...): its answer
    as `model`."""
    answer = yield from send(config, request_of(method, path, query, body))
    return parse(model, answer.body)


def call_no_content(config: Config, method: str, path: str, *, query: Mapping[str, object] | None = None) -> Plan[None]:
    """A call answered `204` (a DELETE): nothing to return."""
    yield from send(config, request_of(method, path, query, None))


def request_of(
    method: str, path: str, query: Mapping[str, object] | None, body: Mapping[str, object] | None
) -> Request:
    """The request of a call: a POST carries an Idempotency-Key, the same on each of its
    retries. A PATCH sends the keyword arguments given as they are (`description=None` clears
    it); other bodies leave out those that are None."""
    encoded = None
    if body is not None:
        encoded = json.dumps(dict(body), separators=(",", ":")).encode() if method == "PATCH" else encode_body(body)
    key = str(uuid.uuid4()) if method == "POST" else None
    return Request(method, path, encode_query(query or {}), encoded, key)


def wait(config: Config, model: type[M], accepted: Accepted, timeout: float, poll_interval: float) -> Plan[M]:
    """Polls the command until it is applied (returns what the synchronous call would have) or
    rejected (raises the error it would have raised); WaitTimeoutError after `timeout` seconds."""
    status = yield from settle(config, accepted.command_id, timeout, poll_interval)
    if status.status == "applied":
        return parse(model, status.result)
    raise error_from_answer(status.http_status or 0, status.result, idempotency_key=accepted.idempotency_key)


def settle(config: Config, command_id: str, timeout: float, poll_interval: float) -> Plan[CommandStatus]:
    """Polls a command until it is applied or rejected: its status, with the synchronous call's
    answer; WaitTimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    path = command_path(command_id)
    pause = poll_interval
    while True:
        status = yield from read(config, CommandStatus, path, {})
        if status.status in ("applied", "rejected"):
            return status
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeoutError(
                f"command {command_id} is still {status.status} after {timeout} s; it will still be applied",
                command_id=command_id,
            )
        yield Sleep(min(pause, left))
        pause = min(pause * 2, WAIT_MAX_POLL_SECONDS)


def submit_batch(
    config: Config,
    operations: Sequence[Operation],
    *,
    atomic: bool,
    idempotency_key: str | None,
    respond_async: bool,
) -> Plan[BatchResponse | Accepted]:
    """POSTs a batch: the server's answer, or `Accepted` when it answered 202 (an atomic batch,
    one command)."""
    body = {"atomic": atomic, "operations": list(operations)}
    path = "/credits/batch"
    return (yield from submit(config, BatchResponse, path, body, idempotency_key, respond_async=respond_async))


def run_batch(
    config: Config, operations: Sequence[Operation], *, atomic: bool, idempotency_key: str | None
) -> Plan[BatchResult]:
    """A synchronous batch: its results, once every operation is applied or refused."""
    outcome = yield from submit_batch(
        config, operations, atomic=atomic, idempotency_key=idempotency_key, respond_async=False
    )
    return (yield from batch(config, operations, outcome, WAIT_DEFAULT_TIMEOUT_SECONDS, WAIT_DEFAULT_POLL_SECONDS))


def batch(
    config: Config,
    operations: Sequence[Operation],
    outcome: BatchResponse | Accepted,
    timeout: float,
    poll_interval: float,
) -> Plan[BatchResult]:
    """What a batch came to, each result typed by its operation: an atomic batch answered 202 is
    waited for (BatchRejectedError when refused), and so is each operation answered 202."""
    if isinstance(outcome, Accepted):
        outcome = yield from wait(config, BatchResponse, outcome, timeout, poll_interval)
    results: list[OperationResult] = []
    for raw in outcome.results:
        status, body = raw.status, cast(object, raw.body)
        if status == 202:
            accepted = parse(AcceptedResponse, body)
            settled = yield from settle(config, accepted.command_id, timeout, poll_interval)
            status, body = settled.http_status or 0, settled.result
        if not 0 <= raw.index < len(operations):
            raise TallyError(f"the answer has a result {raw.index} for no operation", status=0, code="invalid_response")
        operation = operations[raw.index]
        if 200 <= status < 300:
            results.append(applied(operation["op"], raw.index, status, body))
        else:
            error = error_from_answer(status, body, idempotency_key=operation.get("idempotency_key"))
            results.append(RESULTS[operation["op"]](index=raw.index, status=status, error=error))
    return BatchResult(results)


def applied(op: str, index: int, status: int, body: object) -> OperationResult:
    """The result of an applied operation, its answer read as `op` answers."""
    match op:
        case "add":
            return AddResult(index=index, status=status, answer=parse(WriteResponse, body))
        case "deduct":
            return DeductResult(index=index, status=status, answer=parse(WriteResponse, body))
        case "refund":
            return RefundResult(index=index, status=status, answer=parse(RefundResponse, body))
        case "hold":
            return HoldResult(index=index, status=status, answer=parse(HoldResponse, body))
        case "capture":
            return CaptureResult(index=index, status=status, answer=parse(CaptureResponse, body))
        case _:
            return ReleaseResult(index=index, status=status, answer=parse(ReleaseResponse, body))


# --- pieces -----------------------------------------------------------------------------------


class HandleState(Generic[M]):
    """What a handle of a write sent with `respond_async=True` knows: the command it waits for,
    or the result the server gave at once (a retry, or a repeated idempotency key, after the
    command had finished; `command_id` and `status_url` are then None)."""

    def __init__(self, model: type[M], outcome: M | Accepted) -> None:
        self._model = model
        self._outcome = outcome
        self.command_id: str | None = outcome.command_id if isinstance(outcome, Accepted) else None
        self.status_url: str | None = outcome.status_url if isinstance(outcome, Accepted) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(command_id={self.command_id!r}, status_url={self.status_url!r})"


def parse(model: type[M], body: object) -> M:
    """A 2xx body as `model`; a body that is not one is a TallyError, not a KeyError."""
    if isinstance(body, dict):
        try:
            return model.from_dict(body)
        except (KeyError, TypeError, AttributeError) as error:
            raise TallyError(
                f"the answer is not a {model.__name__}: {error!r}", status=0, code="invalid_response"
            ) from error
    raise TallyError(f"the answer is not a {model.__name__} (no JSON object)", status=0, code="invalid_response")


def is_retryable(error: TallyError) -> bool:
    return error.status in (429, 503) or (error.status == 409 and error.code == "idempotency_in_progress")


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter: base * 2^attempt, capped, then a random 50-100% of it."""
    ceiling = min(RETRY_MAX_DELAY_SECONDS, RETRY_BASE_DELAY_SECONDS * 2.0**attempt)
    return ceiling / 2 + random.random() * (ceiling / 2)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def encode_body(params: Mapping[str, object]) -> bytes:
    """The JSON body: the keyword arguments given, without those left as None."""
    body = {name: value for name, value in params.items() if value is not None}
    return json.dumps(body, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_query(query: Mapping[str, object]) -> dict[str, str]:
    encoded = {}
    for name, value in query.items():
        if value is None:
            continue
        encoded[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return encoded


def command_path(command_id: str) -> str:
    return f"/commands/{quote(command_id, safe='')}"


def endpoint_path(endpoint_id: str, then: str = "") -> str:
    return f"/webhook_endpoints/{quote(endpoint_id, safe='')}{then}"


def delivery_path(delivery_id: str, then: str = "") -> str:
    return f"/webhook_deliveries/{quote(delivery_id, safe='')}{then}"


def event_path(event_id: str) -> str:
    return f"/events/{quote(event_id, safe='')}"


def product_path(provider: str, product_id: str) -> str:
    return f"/products/{quote(provider, safe='')}/{quote(product_id, safe='')}"


def history_all_query(query: Mapping[str, object]) -> dict[str, object]:
    """The first page's query of `history_all` (and `list_all`): the API's largest page unless
    `limit` is given."""
    first = dict(query)
    if first.get("limit") is None:
        first["limit"] = HISTORY_ALL_PAGE_SIZE
    return first
