"""src/tally_credits/_generated.py (the SDK's types) must be what scripts/generate.py makes from
the running ingress's /openapi.json; when the API changes, regenerate it."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from helpers import BASE_URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import generate  # scripts/ is not a package: found through the sys.path entry above


def test_the_generated_types_are_up_to_date_with_the_ingresss_openapi_document() -> None:
    fresh = generate.generate(generate.load_document(f"{BASE_URL}/openapi.json"))
    current = generate.GENERATED_FILE.read_text(encoding="utf-8")

    assert current == fresh, f"_generated.py is stale: regenerate it with {generate.REGENERATE_COMMAND}"


def test_a_field_the_api_adds_becomes_a_keyword_argument_and_an_attribute_once_regenerated() -> None:
    document = generate.load_document(f"{BASE_URL}/openapi.json")
    changed = copy.deepcopy(document)
    schemas = changed["components"]["schemas"]
    schemas["AddRequest"]["properties"]["credit_type"] = {"type": ["string", "null"]}
    schemas["WriteResponse"]["properties"]["credit_type"] = {"type": "string"}
    schemas["WriteResponse"]["required"].append("credit_type")

    regenerated = generate.generate(changed)

    assert regenerated != generate.generate(document)
    add_request = regenerated.split("class AddRequest(TypedDict):")[1].split("\nclass ")[0]
    assert "    credit_type: NotRequired[str | None]\n" in add_request
    write_response = regenerated.split("class WriteResponse(Model):")[1]
    assert "    credit_type: str\n" in write_response
    assert 'credit_type=body["credit_type"],' in write_response
