// Every error class, each from a real answer of the real stack (429 and 503, which a healthy
// stack does not give on demand, are in retries.test.mjs through an injecting proxy).

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import {
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    NotFoundError,
    Tally,
    TallyError,
} from "../dist/esm/index.js";
import { API_KEY, client, uniqueUser } from "./helpers.mjs";

async function rejection(promise) {
    return promise.then((value) => assert.fail(`expected an error, got ${JSON.stringify(value)}`), (e) => e);
}

function assertError(error, Class, status, code) {
    assert.ok(error instanceof Class, `expected ${Class.name}, got ${error?.constructor?.name}: ${error?.message}`);
    assert.ok(error instanceof TallyError);
    assert.ok(error instanceof Error);
    assert.equal(error.name, Class.name);
    assert.equal(error.status, status);
    assert.equal(error.code, code);
    if (status !== 0) {
        assert.equal(error.body.error, code);
        assert.equal(error.body.success, false);
        assert.equal(error.message, error.body.message);
    }
}

test("a deduct above the balance is InsufficientCreditsError with balance and available", async () => {
    const tally = client();
    const user = uniqueUser();
    await tally.credits.add({ user_id: user, amount: 40 });
    await tally.credits.hold({ user_id: user, amount: 15 });

    const error = await rejection(tally.credits.deduct({ user_id: user, amount: 50 }));

    assertError(error, InsufficientCreditsError, 402, "insufficient_credits");
    assert.equal(error.balance, 40);
    assert.equal(error.available, 25);
    assert.equal((await tally.credits.balance(user)).balance, 40);
});

test("a second full refund is ConflictError already_refunded", async () => {
    const tally = client();
    const user = uniqueUser();
    const added = await tally.credits.add({ user_id: user, amount: 10 });
    await tally.credits.refund({ ledger_id: added.ledger_id });

    const error = await rejection(tally.credits.refund({ ledger_id: added.ledger_id }));

    assertError(error, ConflictError, 409, "already_refunded");
    assert.ok(!(error instanceof IdempotencyConflictError));
});

test("capturing a released hold is ConflictError hold_not_active", async () => {
    const tally = client();
    const user = uniqueUser();
    await tally.credits.add({ user_id: user, amount: 10 });
    const held = await tally.credits.hold({ user_id: user, amount: 5 });
    await tally.credits.release({ hold_id: held.hold_id });

    assertError(await rejection(tally.credits.capture({ hold_id: held.hold_id })), ConflictError, 409, "hold_not_active");
});

test("a key reused with another body is IdempotencyConflictError, a ConflictError", async () => {
    const tally = client();
    const user = uniqueUser();
    const idempotencyKey = randomUUID();
    await tally.credits.add({ user_id: user, amount: 10 }, { idempotencyKey });

    const error = await rejection(tally.credits.add({ user_id: user, amount: 11 }, { idempotencyKey }));

    assertError(error, IdempotencyConflictError, 409, "idempotency_conflict");
    assert.ok(error instanceof ConflictError);
    assert.equal(error.idempotencyKey, idempotencyKey);
    assert.equal((await tally.credits.balance(user)).balance, 10);
});

test("an unknown command, ledger entry or hold is NotFoundError", async () => {
    const tally = client();
    assertError(await rejection(tally.commands.get(randomUUID())), NotFoundError, 404, "not_found");
    assertError(await rejection(tally.credits.refund({ ledger_id: randomUUID() })), NotFoundError, 404, "not_found");
    assertError(await rejection(tally.credits.release({ hold_id: randomUUID() })), NotFoundError, 404, "not_found");
});

test("a wrong or missing API key is AuthenticationError", async () => {
    const wrong = client({ apiKey: "tk_definitely_not_a_key" });
    assertError(await rejection(wrong.credits.balance(uniqueUser())), AuthenticationError, 401, "unauthorized");

    const saved = process.env.TALLY_API_KEY;
    delete process.env.TALLY_API_KEY;
    try {
        const none = new Tally({ baseUrl: process.env.TALLY_BASE_URL });
        assertError(await rejection(none.credits.add({ user_id: uniqueUser(), amount: 1 })), AuthenticationError, 401, "unauthorized");
    } finally {
        process.env.TALLY_API_KEY = saved;
    }
});

test("the server, not the SDK, rejects bad input: BadRequestError naming the field", async () => {
    const tally = client();
    for (const amount of [0, -5, 1.5, "10", 10 ** 13]) {
        const error = await rejection(tally.credits.add({ user_id: uniqueUser(), amount }));
        assertError(error, BadRequestError, 400, "invalid_request");
        assert.equal(error.body.field, "amount", `amount ${JSON.stringify(amount)}`);
    }
    const unknownField = await rejection(tally.credits.deduct({ user_id: uniqueUser(), amount: 1, ammount: 2 }));
    assertError(unknownField, BadRequestError, 400, "invalid_request");
    const badId = await rejection(tally.commands.get("not-a-uuid"));
    assertError(badId, BadRequestError, 400, "invalid_request");
    assert.equal(badId.body.field, "command_id");
    const badCursor = await rejection(tally.credits.history({ user_id: uniqueUser(), cursor: "forged" }));
    assert.equal(badCursor.body.field, "cursor");
});

test("a body over 64 KiB is BadRequestError payload_too_large (413)", async () => {
    const error = await rejection(client().credits.add({ user_id: uniqueUser(), amount: 1, description: "x".repeat(70_000) }));
    assertError(error, BadRequestError, 413, "payload_too_large");
});

test("a refund of a refund is BadRequestError not_refundable (422)", async () => {
    const tally = client();
    const user = uniqueUser();
    const deducted = await tally.credits.add({ user_id: user, amount: 10 }).then(() => tally.credits.deduct({ user_id: user, amount: 4 }));
    const refund = await tally.credits.refund({ ledger_id: deducted.ledger_id });

    assertError(await rejection(tally.credits.refund({ ledger_id: refund.ledger_id })), BadRequestError, 422, "not_refundable");
});

test("nothing listening is ConnectionError, after the retries", async () => {
    let attempts = 0;
    const tally = new Tally({
        apiKey: API_KEY,
        baseUrl: "http://127.0.0.1:1",
        maxRetries: 1,
        fetch: (url, init) => {
            attempts++;
            return fetch(url, init);
        },
    });
    const error = await rejection(tally.credits.balance(uniqueUser()));
    assertError(error, ConnectionError, 0, "connection_error");
    assert.equal(error.body, null);
    assert.equal(attempts, 2);
});
