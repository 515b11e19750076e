// The whole surface against the real stack: writes, reads, paging, async handles, env config.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { Tally, TallyError, InsufficientCreditsError } from "../dist/esm/index.js";
import { API_KEY, BASE_URL, client, uniqueUser } from "./helpers.mjs";

test("add, deduct and balance: the three calls of the README", async () => {
    const tally = client();
    const user = uniqueUser();

    const added = await tally.credits.add({ user_id: user, amount: 500, description: "Starter pack" });
    const deducted = await tally.credits.deduct({ user_id: user, amount: 50 });
    const { balance } = await tally.credits.balance(user);

    assert.equal(added.success, true);
    assert.equal(added.user_id, user);
    assert.equal(added.balance_after, 500);
    assert.match(added.ledger_id, /^[0-9a-f-]{36}$/);
    assert.equal(deducted.balance_after, 450);
    assert.equal(balance, 450);
});

test("balance of a user never written is 0 with nothing held", async () => {
    const result = await client().credits.balance(uniqueUser());
    assert.equal(result.balance, 0);
    assert.equal(result.held, 0);
    assert.equal(result.available, 0);
    assert.equal(result.next_expiry ?? null, null);
});

test("refund of a deduct gives the credits back and names the refunded entry", async () => {
    const tally = client();
    const user = uniqueUser();
    await tally.credits.add({ user_id: user, amount: 100 });
    const deducted = await tally.credits.deduct({ user_id: user, amount: 60, metadata: { job: "7" } });

    const refunded = await tally.credits.refund({ ledger_id: deducted.ledger_id, amount: 20 });

    assert.equal(refunded.balance_after, 60);
    assert.equal(refunded.refunded_ledger_id, deducted.ledger_id);
    assert.equal(refunded.user_id, user);
});

test("hold, capture, release and holds: reserve now, charge the real cost later", async () => {
    const tally = client();
    const user = uniqueUser();
    await tally.credits.add({ user_id: user, amount: 300 });

    const held = await tally.credits.hold({ user_id: user, amount: 100, expires_in_seconds: 600 });
    assert.equal(held.amount, 100);
    assert.equal(held.balance, 300);
    assert.equal(held.available, 200);
    const captured = await tally.credits.capture({ hold_id: held.hold_id, amount: 37 });
    assert.equal(captured.captured, 37);
    assert.equal(captured.released, 63);
    assert.equal(captured.balance_after, 263);

    const second = await tally.credits.hold({ user_id: user, amount: 50 });
    const released = await tally.credits.release({ hold_id: second.hold_id });
    assert.equal(released.released, 50);
    assert.equal(released.available, 263);

    const all = await tally.credits.holds({ user_id: user });
    assert.deepEqual(all.holds.map((h) => h.status).sort(), ["captured", "released"]);
    const capturedOnly = await tally.credits.holds({ user_id: user, status: "captured" });
    assert.deepEqual(capturedOnly.holds.map((h) => h.hold_id), [held.hold_id]);
});

test("history pages newest first with next_cursor", async () => {
    const tally = client();
    const user = uniqueUser();
    for (const amount of [1, 2, 3]) await tally.credits.add({ user_id: user, amount, description: `add ${amount}` });

    const first = await tally.credits.history({ user_id: user, limit: 2 });
    assert.deepEqual(first.entries.map((e) => e.amount), [3, 2]);
    assert.equal(first.entries[0].type, "add");
    assert.equal(first.entries[0].description, "add 3");
    assert.equal(typeof first.next_cursor, "string");
    const second = await tally.credits.history({ user_id: user, limit: 2, cursor: first.next_cursor });
    assert.deepEqual(second.entries.map((e) => e.amount), [1]);
    assert.equal(second.next_cursor ?? null, null);
});

test("historyAll follows cursors over several pages and yields every entry once", async () => {
    let historyRequests = 0;
    const countingFetch = (url, init) => {
        if (url.includes("/credits/history")) historyRequests++;
        return fetch(url, init);
    };
    const tally = client({ fetch: countingFetch });
    const user = uniqueUser();
    for (let amount = 1; amount <= 7; amount++) await tally.credits.add({ user_id: user, amount });

    const amounts = [];
    for await (const entry of tally.credits.historyAll(user, { limit: 3 })) amounts.push(entry.amount);

    assert.deepEqual(amounts, [7, 6, 5, 4, 3, 2, 1]);
    assert.equal(historyRequests, 3, "7 entries at 3 a page are 3 pages");
});

test("historyAll of a user with no entries yields nothing", async () => {
    const entries = [];
    for await (const entry of client().credits.historyAll(uniqueUser())) entries.push(entry);
    assert.deepEqual(entries, []);
});

test("respondAsync resolves to a handle whose wait() gives the synchronous result", async () => {
    const tally = client();
    const user = uniqueUser();

    const handle = await tally.credits.add({ user_id: user, amount: 40 }, { respondAsync: true });
    assert.match(handle.command_id, /^[0-9a-f-]{36}$/);
    assert.equal(handle.status_url, `/commands/${handle.command_id}`);
    const result = await handle.wait();

    assert.equal(result.success, true);
    assert.equal(result.balance_after, 40);
    assert.equal(result.user_id, user);
    const status = await tally.commands.get(handle.command_id);
    assert.equal(status.status, "applied");
    assert.equal(status.http_status, 200);
    assert.deepEqual(status.result, result);
});

test("wait() on a rejected async command throws the error the synchronous call would have", async () => {
    const tally = client();
    const user = uniqueUser();
    await tally.credits.add({ user_id: user, amount: 10 });

    const handle = await tally.credits.deduct({ user_id: user, amount: 11 }, { respondAsync: true });
    const error = await handle.wait().then(() => assert.fail("expected a rejection"), (e) => e);

    assert.ok(error instanceof InsufficientCreditsError);
    assert.ok(error instanceof TallyError);
    assert.equal(error.status, 402);
    assert.equal(error.code, "insufficient_credits");
    assert.equal(error.balance, 10);
    assert.equal(error.available, 10);
    assert.equal((await tally.credits.balance(user)).balance, 10);
});

test("every async write kind can be waited on", async () => {
    const tally = client();
    const user = uniqueUser();
    const async = { respondAsync: true };
    await (await tally.credits.add({ user_id: user, amount: 100 }, async)).wait();
    const deduct = await (await tally.credits.deduct({ user_id: user, amount: 30 }, async)).wait();
    const refund = await (await tally.credits.refund({ ledger_id: deduct.ledger_id }, async)).wait();
    const hold = await (await tally.credits.hold({ user_id: user, amount: 10 }, async)).wait();
    const capture = await (await tally.credits.capture({ hold_id: hold.hold_id }, async)).wait();
    const hold2 = await (await tally.credits.hold({ user_id: user, amount: 5 }, async)).wait();
    const release = await (await tally.credits.release({ hold_id: hold2.hold_id }, async)).wait();

    assert.equal(refund.balance_after, 100);
    assert.equal(capture.balance_after, 90);
    assert.equal(release.released, 5);
});

test("an explicit idempotency key replays the first answer exactly", async () => {
    const tally = client();
    const user = uniqueUser();
    const idempotencyKey = randomUUID();

    const first = await tally.credits.add({ user_id: user, amount: 25 }, { idempotencyKey });
    const again = await tally.credits.add({ user_id: user, amount: 25 }, { idempotencyKey });

    assert.deepEqual(again, first);
    assert.equal((await tally.credits.balance(user)).balance, 25);
});

test("calls without an explicit key are separate writes", async () => {
    const tally = client();
    const user = uniqueUser();
    await tally.credits.add({ user_id: user, amount: 25 });
    await tally.credits.add({ user_id: user, amount: 25 });
    assert.equal((await tally.credits.balance(user)).balance, 50);
});

test("webhooks.events lists an app's received events (none for a fresh app)", async () => {
    const result = await client().webhooks.events({ provider: "stripe", limit: 10 });
    assert.ok(Array.isArray(result.events));
    assert.equal(result.next_cursor ?? null, null);
    const all = await client().webhooks.events();
    assert.ok(Array.isArray(all.events));
});

test("apiKey and baseUrl come from TALLY_API_KEY and TALLY_BASE_URL, explicit options win", async () => {
    const saved = { base: process.env.TALLY_BASE_URL, key: process.env.TALLY_API_KEY };
    try {
        const fromEnv = new Tally();
        assert.equal((await fromEnv.credits.balance(uniqueUser())).balance, 0);

        process.env.TALLY_BASE_URL = "http://127.0.0.1:1";
        process.env.TALLY_API_KEY = "tk_not_a_key";
        const explicit = new Tally({ apiKey: API_KEY, baseUrl: `${BASE_URL}/` });
        assert.equal((await explicit.credits.balance(uniqueUser())).balance, 0);

        delete process.env.TALLY_BASE_URL;
        assert.throws(() => new Tally({ apiKey: API_KEY }), /TALLY_BASE_URL/);
    } finally {
        process.env.TALLY_BASE_URL = saved.base;
        process.env.TALLY_API_KEY = saved.key;
    }
});
