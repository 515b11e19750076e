"""The README's FastAPI example, as a reader pastes it, run with FastAPI's TestClient against the
real stack: a request is charged, and one the user cannot pay for is a "buy credits" answer."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from fastapi.testclient import TestClient
from helpers import balance_of, unique_user

from tally_credits import Tally

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The ```python block between <!-- {marker}:start --> and <!-- {marker}:end -->."""
    match = re.search(
        rf"<!-- {marker}:start -->\s*```python\n(.*?)```\s*<!-- {marker}:end -->", README.read_text(), re.DOTALL
    )
    assert match, f"README.md has no ```python block between <!-- {marker}:start --> and <!-- {marker}:end -->"
    return match.group(1)


def load(source: str, directory: Path) -> ModuleType:
    path = directory / "readme_fastapi_example.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fastapi_example_charges_each_request_and_answers_402_with_buy_credits(
    tmp_path: Path, tally: Tally
) -> None:
    example = load(readme_block("fastapi-example"), tmp_path)
    user = unique_user()
    tally.credits.add(user_id=user, amount=25)

    with TestClient(example.app) as client:
        first = client.post("/generate", headers={"x-user-id": user})
        second = client.post("/generate", headers={"x-user-id": user})
        refused = client.post("/generate", headers={"x-user-id": user})

    assert first.status_code == 200
    assert first.json()["credits_left"] == 15
    assert second.json()["credits_left"] == 5
    assert refused.status_code == 402
    assert refused.json()["error"] == "buy_credits"
    assert "you have 5" in refused.json()["message"]
    assert balance_of(user) == 5
    assert example.tally._http.is_closed, "the lifespan closed the client"
