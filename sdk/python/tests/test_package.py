"""The wheel as a newcomer gets it: built with `pip wheel`, installed offline into a fresh
virtualenv (with only httpx and its dependencies beside it), then used from there: the README's
quick start run, and consumers type-checked with `mypy --strict` against the installed package
(its py.typed), including code that must NOT type-check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_readme import readme_block

import tally_credits

SDK_DIR = Path(__file__).resolve().parents[1]
PROJECT_README = SDK_DIR.parents[1] / "README.md"
WHEELHOUSE = os.environ.get("TALLY_SDK_PY_WHEELHOUSE", "")
# httpx and what it needs; nothing else may come with the SDK.
RUNTIME_DISTRIBUTIONS = {
    "tally-credits-sdk",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "idna",
    "certifi",
    "typing-extensions",
}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    work: Path


def run(*command: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the fresh virtualenv must find the installed wheel, never src/.
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    assert WHEELHOUSE, "TALLY_SDK_PY_WHEELHOUSE (httpx and its dependencies as wheels) is set by scripts/test"
    work = tmp_path_factory.mktemp("package")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        work / "dist",
        SDK_DIR,
        cwd=work,
    )
    (wheel,) = (work / "dist").glob("tally_credits_sdk-*.whl")
    run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    python = work / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", WHEELHOUSE, wheel, cwd=work)
    yield Installed(wheel, python, work)


def test_the_wheel_holds_the_package_its_types_marker_and_needs_only_httpx(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = next(wheel.read(name).decode() for name in names if name.endswith(".dist-info/METADATA"))
    for module in (
        "__init__.py",
        "py.typed",
        "_generated.py",
        "_core.py",
        "_client.py",
        "_async_client.py",
        "webhooks.py",
    ):
        assert f"tally_credits/{module}" in names, module
    assert f"Version: {tally_credits.__version__}" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires == ["Requires-Dist: httpx>=0.27,<1"]


def test_the_fresh_virtualenv_has_the_sdk_and_httpx_and_nothing_more(installed: Installed) -> None:
    listed = json.loads(run(installed.python, "-m", "pip", "list", "--format=json", cwd=installed.work).stdout)
    names = {package["name"].lower().replace("_", "-") for package in listed} - {"pip", "setuptools"}

    assert "tally-credits-sdk" in names
    assert names <= RUNTIME_DISTRIBUTIONS, names - RUNTIME_DISTRIBUTIONS
    where = run(installed.python, "-c", "import tally_credits; print(tally_credits.__file__)", cwd=installed.work)
    assert where.stdout.startswith(str(installed.work / "venv")), where.stdout


def test_the_readme_quick_start_runs_from_the_installed_wheel(installed: Installed) -> None:
    example = installed.work / "example.py"
    example.write_text(readme_block("example"))

    output = run(installed.python, example, cwd=installed.work).stdout

    assert output.splitlines()[-1].startswith("balance: "), output


CONSUMER = """\
import asyncio
import os

from tally_credits import (
    AsyncTally,
    AutoTopup,
    AutoTopupAttempt,
    BalanceResponse,
    BalancesResponse,
    BatchRejectedError,
    BatchResult,
    CommandHandle,
    EffectiveAlerts,
    Endpoint,
    EventEnvelope,
    HistoryEntry,
    HoldOperation,
    InsufficientCreditsError,
    Product,
    Tally,
    TallyError,
    WriteResponse,
)
from tally_credits.webhooks import WebhookEvent, verify


def event_calls(tally: Tally) -> str | None:
    endpoint: Endpoint = tally.webhook_endpoints.create(url="https://example.com/hook", events=["balance.low"])
    tally.webhook_endpoints.update(endpoint_id=endpoint.id, enabled=False, description=None)
    events: list[EventEnvelope] = list(tally.events.list_all(type="balance.low", user_id="u"))
    alerts: EffectiveAlerts = tally.credits.alerts.get(user_id="u")
    tally.credits.alerts.set(thresholds=[100, 10], credit_type="credits")
    print(events, alerts.source)
    return endpoint.secret


def plan_calls(tally: Tally) -> int:
    product: Product = tally.products.put(provider="stripe", product_id="price_x", credits=500, mode="one_time")
    products: list[Product] = tally.products.list()
    tally.products.delete(provider="stripe", product_id="price_x")
    settings: AutoTopup = tally.credits.auto_topup.set(
        user_id="u",
        enabled=True,
        threshold=100,
        credits=1000,
        amount=999,
        currency="usd",
        stripe_customer_id="cus_x",
        stripe_payment_method_id="pm_x",
    )
    attempt: AutoTopupAttempt | None = tally.credits.auto_topup.get(user_id="u", credit_type="credits").last_attempt
    tally.credits.auto_topup.delete(user_id="u")
    print(products, attempt)
    return product.credits + settings.consecutive_failures


def sync_calls(tally: Tally) -> int:
    added: WriteResponse = tally.credits.add(user_id="u", amount=500, metadata={"order": "42"}, idempotency_key="k")
    handle: CommandHandle[WriteResponse] = tally.credits.deduct(user_id="u", amount=5, respond_async=True)
    waited: int = handle.wait(timeout=10).balance_after
    command_id: str | None = handle.command_id
    balance: BalanceResponse = tally.credits.balance(user_id="u")
    entries: list[HistoryEntry] = list(tally.credits.history_all(user_id="u", limit=50))
    try:
        tally.credits.deduct(user_id="u", amount=10**6)
    except InsufficientCreditsError as error:
        available: int | None = error.available
        print(available, error.status, error.code, error.body)
    except TallyError:
        raise
    print(command_id, entries, added.to_dict())
    return balance.available + waited


def credit_types_and_batches(tally: Tally) -> int:
    image: BalanceResponse = tally.credits.balance(user_id="u", credit_type="image")
    balances: BalancesResponse = tally.credits.balances(user_id="u")
    answer: BatchResult = tally.credits.batch(
        operations=[
            {"op": "add", "user_id": "u", "amount": 1, "credit_type": "image"},
            {"op": "capture", "hold_id": "h", "idempotency_key": "k"},
        ]
    )
    total = 0
    for result in answer.results:
        if result.op == "add" and result.answer is not None:
            total += result.answer.balance_after
        elif result.op == "capture" and result.answer is not None:
            total += result.answer.captured
        elif result.error is not None:
            print(result.error.code)
    hold: HoldOperation = {"op": "hold", "user_id": "u", "amount": 1}
    handle = tally.credits.batch(operations=[hold], atomic=True, respond_async=True)
    waited: BatchResult = handle.wait(timeout=5)
    try:
        tally.credits.batch(operations=[{"op": "deduct", "user_id": "u", "amount": 1}], atomic=True)
    except BatchRejectedError as error:
        failed: TallyError = error.failed
        print(error.failed_index, failed.code)
    print(image, balances, waited)
    return total


async def async_calls() -> int:
    async with AsyncTally(api_key=os.environ.get("TALLY_API_KEY"), timeout=5.0, max_retries=1) as tally:
        result = await tally.credits.refund(ledger_id="0193a000-0000-7000-8000-000000000001", amount=1)
        handle = await tally.credits.hold(user_id="u", amount=3, respond_async=True)
        held = await handle.wait()
        async for entry in tally.credits.history_all(user_id="u"):
            print(entry.amount)
        batch: BatchResult = await tally.credits.batch(operations=[{"op": "release", "hold_id": "h"}])
        print(batch, (await tally.credits.balances(user_id="u")).balances)
        return result.balance_after + held.available


def webhook(body: bytes, headers: dict[str, str]) -> str:
    event: WebhookEvent = verify(body, headers, "whsec_c2VjcmV0")
    return event.type


if __name__ == "__main__":
    with Tally() as client:
        print(sync_calls(client), credit_types_and_batches(client), asyncio.run(async_calls()))
"""

# Each line must be a mypy error of exactly that code: --strict warns about an unneeded ignore.
MUST_NOT_TYPE_CHECK = """\
from tally_credits import AsyncTally, Tally, WriteResponse

tally = Tally(api_key="tk_x", base_url="http://127.0.0.1:1")
tally.credits.add(user_id="u", amount="500")  # type: ignore[call-overload]
tally.credits.deduct(amount=5)  # type: ignore[call-overload]
tally.credits.add(user_id="u", ammount=5)  # type: ignore[call-overload]
tally.credits.refund(user_id="u", amount=5)  # type: ignore[call-overload]
tally.credits.add(user_id="u", amount=1, idempotencyKey="k")  # type: ignore[call-overload]
tally.credits.add(user_id="u", amount=1, metadata={"order": 42})  # type: ignore[dict-item]
tally.credits.balance("u")  # type: ignore[call-arg]
tally.credits.balance(user_id=123)  # type: ignore[arg-type]
tally.credits.history(user_id="u", limit="50")  # type: ignore[arg-type]
tally.commands.get(command_id=None)  # type: ignore[arg-type]
tally.credits.add(user_id="u", amount=1, respond_async=True).balance_after  # type: ignore[attr-defined]
tally.credits.balance(user_id="u").balance = 3  # type: ignore[misc]
Tally(timeout="30")  # type: ignore[arg-type]
tally.credits.balance(user_id="u", credit_type=5)  # type: ignore[arg-type]
tally.credits.batch(operations=[{"op": "refund", "user_id": "u"}])  # type: ignore[list-item]
tally.credits.batch(operations=[{"op": "transfer", "user_id": "u", "amount": 1}])  # type: ignore[misc, list-item]
tally.credits.batch([{"op": "add", "user_id": "u", "amount": 1}])  # type: ignore[call-overload]
tally.credits.batch(operations=[]).results[0].answer.ledger_id  # type: ignore[union-attr]
tally.products.put(provider="stripe", product_id="price_x", credits="5", mode="one_time")  # type: ignore[arg-type]
tally.products.put("stripe", "price_x", credits=5, mode="one_time")  # type: ignore[call-arg]
tally.credits.auto_topup.set(user_id="u", enabled=True, threshold=1)  # type: ignore[call-arg]


async def forgot_await() -> None:
    result: WriteResponse = AsyncTally().credits.add(user_id="u", amount=1)  # type: ignore[assignment]
    print(result)
"""

WRONG_ARGUMENT_TYPE = """\
from tally_credits import Tally

tally = Tally(api_key="tk_x", base_url="http://127.0.0.1:1")
tally.credits.balance(user_id=123)
"""


def mypy(installed: Installed, *files: str) -> subprocess.CompletedProcess[str]:
    return run(
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--python-executable",
        installed.python,
        "--cache-dir",
        installed.work / ".mypy_cache",
        *files,
        cwd=installed.work,
        check=False,
    )


def test_consumers_and_the_readme_examples_pass_mypy_strict_against_the_installed_package(
    installed: Installed,
) -> None:
    project_snippet = re.search(r"```python\n(.*?)```", PROJECT_README.read_text(), re.DOTALL)
    assert project_snippet, "the project README's quick start has no ```python snippet"
    (installed.work / "consumer.py").write_text(CONSUMER)
    (installed.work / "quick_start.py").write_text(readme_block("example"))
    (installed.work / "project_readme.py").write_text(project_snippet.group(1))
    (installed.work / "precise.py").write_text(MUST_NOT_TYPE_CHECK)

    result = mypy(installed, "consumer.py", "quick_start.py", "project_readme.py", "precise.py")

    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_argument_type_fails_mypy(installed: Installed) -> None:
    (installed.work / "wrong.py").write_text(WRONG_ARGUMENT_TYPE)

    result = mypy(installed, "wrong.py")

    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        'wrong.py:4: error: Argument "user_id" to "balance" of "Credits" has incompatible type "int"; expected "str"'
        in (result.stdout)
    ), result.stdout


def test_the_package_itself_passes_mypy_strict() -> None:
    result = run(
        sys.executable, "-m", "mypy", "--strict", "src/tally_credits", "scripts/generate.py", cwd=SDK_DIR, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_lint_clean_and_formatted() -> None:
    for command in (["check", "."], ["format", "--check", "."]):
        result = run(sys.executable, "-m", "ruff", *command, cwd=SDK_DIR, check=False)
        assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"
