"""Shared by the tests: the stack's address and key (set by scripts/test), unique user ids, and a
proxy that injects failures in front of the ingress."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tally_credits import HistoryEntry, Tally

BASE_URL = os.environ.get("TALLY_BASE_URL", "")
API_KEY = os.environ.get("TALLY_API_KEY", "")

# How long a hung request is held before the proxy lets it go (the client gives up long before).
HANG_MAX_SECONDS = 30.0


def unique_user(prefix: str = "user") -> str:
    return f"{prefix}_{uuid.uuid4()}"


def history_of(user_id: str) -> list[HistoryEntry]:
    """Every entry of a user's history, read directly (one big page)."""
    with Tally(api_key=API_KEY, base_url=BASE_URL) as tally:
        return tally.credits.history(user_id=user_id, limit=200).entries


def balance_of(user_id: str) -> int:
    with Tally(api_key=API_KEY, base_url=BASE_URL) as tally:
        return tally.credits.balance(user_id=user_id).balance


@dataclass(frozen=True)
class Seen:
    """A request the proxy received."""

    method: str
    path: str
    idempotency_key: str | None
    at: float  # time.monotonic() when it arrived


Action = dict[str, Any]


def is_write(seen: Seen) -> bool:
    return seen.method == "POST"


class Proxy:
    """A proxy in front of the ingress. `plan` says what to do with the first requests that
    `matches` (default: every request), one action each; later requests are forwarded as they are:

        {"drop": "before"}             close the connection without forwarding (the server never sees it)
        {"drop": "after"}              forward, let the server answer, then close the connection unanswered
        {"hang": True}                 never answer and never forward
        {"respond_async": True}        forward with `Prefer: respond-async`, as if the sync call timed out
        {"status", "body", "headers"}  answer this instead of forwarding

    `requests` records every request the proxy saw.
    """

    def __init__(self, plan: list[Action], matches: Callable[[Seen], bool] | None = None) -> None:
        target = urlsplit(BASE_URL)
        self._target = (target.hostname or "127.0.0.1", target.port or 80)
        self._plan = list(plan)
        self._matches = matches or (lambda _: True)
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.requests: list[Seen] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def writes(self) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.requests if is_write(seen)]

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _next_action(self, seen: Seen) -> Action | None:
        with self._lock:
            self.requests.append(seen)
            if self._plan and self._matches(seen):
                return self._plan.pop(0)
            return None

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self._target, timeout=HANG_MAX_SECONDS)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen = Seen(self.command, self.path, self.headers.get("idempotency-key"), time.monotonic())
                action = proxy._next_action(seen) or {}
                if action.get("drop") == "before":
                    return self._hang_up()
                if action.get("hang"):
                    proxy._released.wait(HANG_MAX_SECONDS)
                    return self._hang_up()
                if "status" in action:
                    return self._answer(action["status"], action.get("headers", {}), json.dumps(action.get("body", {})))
                headers = {name: value for name, value in self.headers.items() if name.lower() != "connection"}
                if action.get("respond_async"):
                    headers["Prefer"] = "respond-async"
                try:
                    status, upstream_headers, upstream_body = proxy._forward(self.command, self.path, headers, body)
                except OSError:
                    return self._hang_up()
                if action.get("drop") == "after":
                    return self._hang_up()
                self._answer(status, upstream_headers, upstream_body)

            def _answer(self, status: int, headers: dict[str, str], body: str | bytes) -> None:
                content = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in (
                        "content-type",
                        "content-length",
                        "connection",
                        "transfer-encoding",
                        "date",
                        "server",
                    ):
                        self.send_header(name, value)
                self.send_header("Content-Type", headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _hang_up(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        return Handler
