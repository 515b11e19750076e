"""Schemathesis hooks for ./scripts/api-fuzz: signed webhooks, and the API's rules that JSON
Schema cannot state.

Every id a `2xx` answer to a POST names (`ledger_id`, `hold_id`, `command_id`, in a batch's
results too) is appended to TALLY_FUZZ_ACCEPTED, so that ./scripts/api-fuzz can check that
nothing else was written: a request the API refused never writes.

The payment webhook receivers authenticate a request by its signature over the exact body,
which no schema can generate: every schema-valid request to them is signed here with the fuzz
app's secrets (TALLY_FUZZ_STRIPE_SECRET, TALLY_FUZZ_POLAR_SECRET), as Stripe and Polar sign
theirs; a request that breaks the schema is sent as generated.

The OpenAPI document states every rule it can. A few it can only state in words, and a
schema-valid request that breaks one of them is refused with 400 naming the field, as the
contract says. `positive_data_acceptance` would count such a refusal as a failure; this hook
lets it pass only when the request really broke that rule (the values it sent show it) and
the answer names the field:

- a number with a zero fraction (`5.0`), alone or in a list (`thresholds`), where the API wants a JSON integer (JSON Schema's
  `integer` counts `5.0` as one);
- a `user_id` (or admin `prefix`) of at most 255 characters but more than 255 bytes of UTF-8
  (JSON Schema's `maxLength` counts characters);
- an `expires_at` that is not in the future;
- a `cursor` the endpoint did not issue (every `next_cursor` answered in the run is kept);
- a refund's or a capture's `amount` above what the entry or the hold has left, which the
  answer states;
- an atomic batch whose operations name more than one user.

A field may be one of a batch's operations' (`operations[2].amount`).

Every other refusal of a schema-valid request still fails the run.
"""

import atexit
import base64
import collections
import datetime
import hashlib
import hmac
import json
import os
import re
import sys
import time
import uuid

import schemathesis

# Every `next_cursor` the API has answered in this run.
ISSUED_CURSORS = set()
# How many refusals each rule explained, printed when the run ends.
EXPLAINED = collections.Counter()

USER_ID_BYTES_MAX = 255

STRIPE_SECRET = os.environ.get("TALLY_FUZZ_STRIPE_SECRET")
POLAR_SECRET = os.environ.get("TALLY_FUZZ_POLAR_SECRET")


def _body_bytes(case):
    """The body as it goes on the wire: requests writes a JSON body with `json.dumps`."""
    return json.dumps(case.body, allow_nan=False).encode("utf-8")


def _polar_key(secret):
    """Polar's `whsec_` secrets are base64 after the prefix (Standard Webhooks)."""
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


@schemathesis.hook
def before_call(context, case, kwargs):
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if not positive or not isinstance(case.body, dict):
        return
    if case.headers is None:
        case.headers = {}
    now = str(int(time.time()))
    if case.path.startswith("/webhooks/stripe/") and STRIPE_SECRET:
        mac = hmac.new(STRIPE_SECRET.encode(), now.encode() + b"." + _body_bytes(case), hashlib.sha256)
        case.headers["Stripe-Signature"] = f"t={now},v1={mac.hexdigest()}"
    elif case.path.startswith("/webhooks/polar/") and POLAR_SECRET:
        # Servers trim a header's surrounding white space: sign the id as it will arrive.
        event_id = str(case.headers.get("webhook-id") or "").strip() or str(uuid.uuid4())
        signed = f"{event_id}.{now}.".encode() + _body_bytes(case)
        mac = hmac.new(_polar_key(POLAR_SECRET), signed, hashlib.sha256).digest()
        case.headers["webhook-id"] = event_id
        case.headers["webhook-timestamp"] = now
        case.headers["webhook-signature"] = "v1," + base64.b64encode(mac).decode()


ACCEPTED = os.environ.get("TALLY_FUZZ_ACCEPTED")


@schemathesis.hook
def after_call(context, case, response):
    try:
        body = response.json()
    except Exception:
        return
    if not isinstance(body, dict):
        return
    if isinstance(body.get("next_cursor"), str):
        ISSUED_CURSORS.add(body["next_cursor"])
    if ACCEPTED and case.method.upper() == "POST" and 200 <= response.status_code < 300:
        # A batch answers each operation's body in `results`.
        answers = [body] + [
            result["body"]
            for result in body.get("results") or []
            if isinstance(result, dict) and isinstance(result.get("body"), dict)
        ]
        ids = [
            answer[key]
            for answer in answers
            for key in ("ledger_id", "hold_id", "command_id")
            if isinstance(answer.get(key), str)
        ]
        if ids:
            with open(ACCEPTED, "a", encoding="utf-8") as accepted:
                accepted.write("".join(f"{id}\n" for id in ids))


def _sent(case, field):
    """The value the request sent for `field`: in its body (`operations[2].amount` in a
    batch's), its query or its path."""
    if not isinstance(field, str):
        return None
    nested = re.fullmatch(r"operations\[(\d+)\]\.(.+)", field)
    if nested and isinstance(case.body, dict):
        operations = case.body.get("operations")
        index = int(nested.group(1))
        if isinstance(operations, list) and index < len(operations) and isinstance(operations[index], dict):
            return operations[index].get(nested.group(2))
        return None
    for container in (case.body, case.query, case.path_parameters):
        if isinstance(container, dict) and field in container:
            return container[field]
    return None


def _field_name(field):
    """`amount` for `amount` and for a batch's `operations[2].amount`."""
    return field.rsplit(".", 1)[-1] if isinstance(field, str) else field


def _one_user(case):
    """Whether every operation of the batch names the same user."""
    operations = case.body.get("operations") if isinstance(case.body, dict) else None
    users = {op.get("user_id") for op in operations or [] if isinstance(op, dict)}
    return len(users) <= 1


def _in_the_past(text):
    try:
        when = datetime.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return False
    if when.tzinfo is None:
        return False
    return when <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)


def _rule_stated_in_words(case, answer):
    """The rule stated in words that the request broke and the answer names, if any."""
    message = answer.get("message") or ""
    sent = _sent(case, answer.get("field"))
    field = _field_name(answer.get("field"))
    if field == "user_id" and message.endswith("must name the same user") and not _one_user(case):
        return "an atomic batch of several users"
    if isinstance(sent, float) and sent.is_integer():
        return "a JSON integer written with a fraction"
    if isinstance(sent, list) and any(isinstance(item, float) and item.is_integer() for item in sent):
        return "a JSON integer written with a fraction"
    if field in ("user_id", "prefix") and isinstance(sent, str):
        if len(sent) <= USER_ID_BYTES_MAX < len(sent.encode("utf-8")):
            return "a user id over 255 bytes"
    if field == "expires_at" and isinstance(sent, str) and message.endswith("must be in the future"):
        if _in_the_past(sent):
            return "an expiry in the past"
    if field == "expires_in_days" and "one_time products only" in message:
        if isinstance(case.body, dict) and case.body.get("mode") == "subscription":
            return "an expiry for a subscription product"
    if field == "cursor" and isinstance(sent, str) and sent not in ISSUED_CURSORS:
        if message.endswith("is not a cursor issued by this endpoint"):
            return "a cursor the endpoint did not issue"
    if field == "amount" and isinstance(sent, int):
        if case.path.endswith("/credits/refund"):
            left = answer.get("refundable")
            if isinstance(left, int) and sent > left:
                return "a refund of more than is left"
        if case.path.endswith("/credits/capture"):
            held = re.search(r"the hold has (\d+) credits", message)
            if held is not None and sent > int(held.group(1)):
                return "a capture of more than is held"
    return None


@atexit.register
def _print_explained():
    if EXPLAINED:
        counts = ", ".join(f"{rule}: {count}" for rule, count in sorted(EXPLAINED.items()))
        print(f"api-fuzz: schema-valid requests refused for a rule stated in words: {counts}", file=sys.stderr)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure except a 400 for one of the rules above, by a request that broke it."""
    if failure.code != "ST202" or response.status_code != 400:
        return True
    try:
        answer = response.json()
    except Exception:
        return True
    if not isinstance(answer, dict) or answer.get("error") != "invalid_request":
        return True
    rule = _rule_stated_in_words(case, answer)
    if rule is None:
        return True
    EXPLAINED[rule] += 1
    return False
