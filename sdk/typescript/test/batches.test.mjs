// Credit types and batches against the real stack: several balances per user, and many
// operations in one call with a typed result each, all or none when atomic.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
    BatchRejectedError,
    InsufficientCreditsError,
    NotFoundError,
    TallyError,
} from "../dist/esm/index.js";
import { client, historyOf, uniqueUser, withProxy } from "./helpers.mjs";

test("each credit type is a balance of its own, written, read and listed", async () => {
    const tally = client();
    const user = uniqueUser();
    await tally.credits.add({ user_id: user, amount: 100 });

    const added = await tally.credits.add({ user_id: user, amount: 30, credit_type: "image" });
    const spent = await tally.credits.deduct({ user_id: user, amount: 10, credit_type: "image" });
    const held = await tally.credits.hold({ user_id: user, amount: 5, credit_type: "image" });
    const refunded = await tally.credits.refund({ ledger_id: spent.ledger_id });

    assert.deepEqual([added.credit_type, added.balance_after], ["image", 30]);
    assert.deepEqual([spent.credit_type, spent.balance_after], ["image", 20]);
    assert.deepEqual([held.credit_type, held.available], ["image", 15]);
    assert.deepEqual([refunded.credit_type, refunded.balance_after], ["image", 30], "a refund acts on its entry's type");
    const byDefault = await tally.credits.balance(user);
    assert.deepEqual([byDefault.credit_type, byDefault.balance], ["credits", 100]);
    const image = await tally.credits.balance(user, { credit_type: "image" });
    assert.deepEqual([image.balance, image.held, image.available], [30, 5, 25]);
    const all = await tally.credits.balances(user);
    assert.equal(all.user_id, user);
    assert.deepEqual(
        all.balances.map((b) => [b.credit_type, b.balance, b.available]),
        [["credits", 100, 100], ["image", 30, 25]],
    );
    const history = await tally.credits.history({ user_id: user, credit_type: "image" });
    assert.deepEqual(history.entries.map((e) => [e.type, e.credit_type]), [
        ["refund", "image"],
        ["deduct", "image"],
        ["add", "image"],
    ]);
    const holds = await tally.credits.holds({ user_id: user, credit_type: "image" });
    assert.deepEqual(holds.holds.map((h) => [h.hold_id, h.credit_type]), [[held.hold_id, "image"]]);
    assert.equal((await tally.credits.holds({ user_id: user, credit_type: "credits" })).holds.length, 0);
});

test("a batch answers each operation as if sent alone, typed by its op", async () => {
    const tally = client();
    const [ann, bob] = [uniqueUser("ann"), uniqueUser("bob")];
    const earlier = await tally.credits.add({ user_id: ann, amount: 50 });

    const { results } = await tally.credits.batch([
        { op: "add", user_id: bob, amount: 30, credit_type: "image" },
        { op: "deduct", user_id: bob, amount: 20 },
        { op: "refund", ledger_id: earlier.ledger_id, amount: 5 },
        { op: "hold", user_id: ann, amount: 10 },
        { op: "refund", ledger_id: "00000000-0000-7000-8000-000000000000" },
    ]);

    assert.deepEqual(results.map((r) => [r.index, r.op, r.status, r.ok]), [
        [0, "add", 200, true],
        [1, "deduct", 402, false],
        [2, "refund", 200, true],
        [3, "hold", 200, true],
        [4, "refund", 404, false],
    ]);
    const [add, deduct, refund, hold, unknown] = results;
    assert.ok(add.ok && add.op === "add");
    assert.deepEqual([add.body.credit_type, add.body.balance_after], ["image", 30]);
    assert.ok(!deduct.ok);
    assert.ok(deduct.error instanceof InsufficientCreditsError, "the error that call alone would throw");
    assert.equal(deduct.body.error, "insufficient_credits");
    assert.ok(refund.ok && refund.op === "refund");
    assert.equal(refund.body.refunded_ledger_id, earlier.ledger_id);
    assert.ok(hold.ok && hold.op === "hold");
    assert.equal(hold.body.available, 35);
    assert.ok(!unknown.ok && unknown.error instanceof NotFoundError);

    // An operation's own key works like that request's Idempotency-Key.
    const capture = { op: "capture", hold_id: hold.body.hold_id, amount: 4, idempotency_key: `capture-${ann}` };
    const first = await tally.credits.batch([capture]);
    const again = await tally.credits.batch([capture]);
    assert.deepEqual(again.results[0].body, first.results[0].body);
    assert.equal((await tally.credits.balance(ann)).balance, 41, "50 - 5 refunded - 4 captured, once");
});

test("an atomic batch applies all or nothing; a refusal is BatchRejectedError", async () => {
    const tally = client();
    const user = uniqueUser();

    const applied = await tally.credits.batch(
        [
            { op: "add", user_id: user, amount: 10 },
            { op: "deduct", user_id: user, amount: 4 },
        ],
        { atomic: true },
    );
    const deduct = applied.results[1];
    assert.ok(deduct.ok && deduct.op === "deduct");
    assert.equal(deduct.body.balance_after, 6);

    const error = await tally.credits
        .batch(
            [
                { op: "add", user_id: user, amount: 100 },
                { op: "deduct", user_id: user, amount: 1, credit_type: "image" },
            ],
            { atomic: true },
        )
        .then(assert.fail, (e) => e);
    assert.ok(error instanceof BatchRejectedError);
    assert.ok(error instanceof TallyError);
    assert.deepEqual([error.status, error.code, error.failedIndex], [422, "batch_rejected", 1]);
    assert.ok(error.failed instanceof InsufficientCreditsError, "the refused operation's own error");
    assert.equal(error.failed.balance, 0);
    assert.equal((await historyOf(user)).length, 2, "nothing of the refused batch was written");
});

test("respondAsync: an atomic batch is one command, a batch that is not one per operation", async () => {
    const tally = client();
    const user = uniqueUser();

    const atomic = await tally.credits.batch([{ op: "add", user_id: user, amount: 7 }], {
        atomic: true,
        respondAsync: true,
    });
    assert.match(atomic.command_id ?? "", /^[0-9a-f-]{36}$/);
    assert.equal(atomic.status_url, `/commands/${atomic.command_id}`);
    const done = await atomic.wait();
    assert.equal(done.results[0].ok && done.results[0].body.balance_after, 7);

    const each = await tally.credits.batch(
        [
            { op: "add", user_id: user, amount: 3 },
            { op: "deduct", user_id: user, amount: 50 },
        ],
        { respondAsync: true },
    );
    assert.equal(each.command_id, null);
    const settled = await each.wait();
    assert.deepEqual(settled.results.map((r) => r.status), [200, 402]);
    assert.ok(!settled.results[1].ok && settled.results[1].error instanceof InsufficientCreditsError);
});

test("a batch whose answer was lost is retried with one key and applied once", async () => {
    await withProxy([{ drop: "after" }], async (proxy, tally) => {
        const user = uniqueUser();
        const { results } = await tally.credits.batch([
            { op: "add", user_id: user, amount: 8 },
            { op: "deduct", user_id: user, amount: 3 },
        ]);

        assert.deepEqual(results.map((r) => r.status), [200, 200]);
        assert.equal(proxy.writes().length, 2);
        assert.ok(proxy.writes()[0].idempotencyKey);
        assert.equal(proxy.writes()[1].idempotencyKey, proxy.writes()[0].idempotencyKey);
        assert.equal((await historyOf(user)).length, 2);
    });
});

test("a synchronous batch waits for the operations the server answered 202", async () => {
    await withProxy([{ respondAsync: true }, { respondAsync: true }], async (proxy, tally) => {
        const user = uniqueUser();
        const { results } = await tally.credits.batch([
            { op: "add", user_id: user, amount: 5 },
            { op: "deduct", user_id: user, amount: 9 },
        ]);
        assert.deepEqual(results.map((r) => r.status), [200, 402]);
        assert.ok(proxy.requests.some((r) => r.method === "GET" && r.url.startsWith("/commands/")), "polled the commands");

        const error = await tally.credits
            .batch([{ op: "deduct", user_id: user, amount: 9 }], { atomic: true })
            .then(assert.fail, (e) => e);
        assert.ok(error instanceof BatchRejectedError && error.failed instanceof InsufficientCreditsError);
    });
});
