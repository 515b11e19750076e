"""Fixtures on the real stack that scripts/test starts (TALLY_BASE_URL, TALLY_API_KEY)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import API_KEY, BASE_URL, Action, Proxy, Seen

from tally_credits import Tally


def pytest_configure(config: pytest.Config) -> None:
    if not BASE_URL or not API_KEY:
        raise pytest.UsageError(
            "TALLY_BASE_URL and TALLY_API_KEY must point at a running stack (sdk/python/scripts/test sets them)"
        )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_client() -> Iterator[Callable[..., Tally]]:
    """`make_client(**options)`: a Tally on the stack (options override), closed after the test."""
    clients: list[Tally] = []

    def make(**options: Any) -> Tally:
        client = Tally(**{"api_key": API_KEY, "base_url": BASE_URL, **options})
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def tally(make_client: Callable[..., Tally]) -> Tally:
    return make_client()


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., Proxy]]:
    """`start_proxy(plan, matches=None)`: a failure-injecting Proxy, closed after the test."""
    proxies: list[Proxy] = []

    def start(plan: list[Action] | None = None, matches: Callable[[Seen], bool] | None = None) -> Proxy:
        proxy = Proxy(plan or [], matches)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
