// Safe retries through a proxy that injects failures in front of the real ingress: a retried
// write carries the same Idempotency-Key and takes effect exactly once; only network errors,
// timeouts, 429, 503 and 409 idempotency_in_progress are retried; Retry-After is honoured.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
    BadRequestError,
    ConnectionError,
    InsufficientCreditsError,
    RateLimitError,
    TallyError,
    UnavailableError,
    WaitTimeoutError,
} from "../dist/esm/index.js";
import { client, historyOf, startProxy, uniqueUser, withProxy } from "./helpers.mjs";

const isWrite = (req) => req.method === "POST";
const rateLimited = (retryAfter) => ({
    status: 429,
    headers: { "retry-after": String(retryAfter) },
    body: { success: false, error: "rate_limited", message: "request budget spent" },
});
const unavailable = {
    status: 503,
    headers: { "retry-after": "0" },
    body: { success: false, error: "unavailable", message: "broker unreachable" },
};


test("a write whose answer is lost after it was applied is retried with its key and counts once", async () => {
    await withProxy([{ drop: "after" }], async (proxy, tally) => {
        const user = uniqueUser();

        const result = await tally.credits.add({ user_id: user, amount: 70 });

        const writes = proxy.writes();
        assert.equal(writes.length, 2, "the dropped attempt and one retry");
        assert.ok(writes[0].idempotencyKey, "a write carries an Idempotency-Key");
        assert.equal(writes[1].idempotencyKey, writes[0].idempotencyKey);
        assert.equal(result.balance_after, 70);
        assert.equal((await tally.credits.balance(user)).balance, 70);
        assert.deepEqual((await historyOf(user)).map((e) => e.ledger_id), [result.ledger_id]);
    });
});

test("a deduct whose connection drops before the server sees it is retried and applied once", async () => {
    const user = uniqueUser();
    await client().credits.add({ user_id: user, amount: 100 });
    await withProxy([{ drop: "before" }], async (proxy, tally) => {
        const result = await tally.credits.deduct({ user_id: user, amount: 30 });

        assert.equal(proxy.writes().length, 2);
        assert.equal(result.balance_after, 70);
        assert.equal((await historyOf(user)).length, 2);
    });
});

test("a timed-out attempt is retried with the same key and the write counts once", async () => {
    const proxy = await startProxy({ plan: [{ hang: true }], matches: isWrite });
    try {
        // Generous: the retry must be answered within it, on a loaded machine too.
        const tally = client({ baseUrl: proxy.url, timeoutMs: 2000 });
        const user = uniqueUser();

        const result = await tally.credits.add({ user_id: user, amount: 5 });

        assert.equal(proxy.writes().length, 2);
        assert.equal(proxy.writes()[1].idempotencyKey, proxy.writes()[0].idempotencyKey);
        assert.equal(result.balance_after, 5);
        assert.equal((await historyOf(user)).length, 1);
    } finally {
        await proxy.close();
    }
});

test("without retries a timeout is ConnectionError code timeout", async () => {
    const proxy = await startProxy({ plan: [{ hang: true }] });
    try {
        const tally = client({ baseUrl: proxy.url, timeoutMs: 200, maxRetries: 0 });
        const error = await tally.credits.balance(uniqueUser()).then(() => assert.fail("expected a timeout"), (e) => e);
        assert.ok(error instanceof ConnectionError);
        assert.equal(error.code, "timeout");
        assert.equal(error.status, 0);
    } finally {
        await proxy.close();
    }
});

test("429 rate_limited is retried no sooner than Retry-After, and the write counts once", async () => {
    await withProxy([rateLimited(1)], async (proxy, tally) => {
        const user = uniqueUser();

        const result = await tally.credits.add({ user_id: user, amount: 9 });

        const writes = proxy.writes();
        assert.equal(writes.length, 2);
        assert.equal(writes[1].idempotencyKey, writes[0].idempotencyKey);
        assert.ok(writes[1].at - writes[0].at >= 990, `retried after ${writes[1].at - writes[0].at} ms, Retry-After was 1 s`);
        assert.equal(result.balance_after, 9);
        assert.equal((await historyOf(user)).length, 1);
    });
});

test("429 with no retries left is RateLimitError with the server's code and Retry-After", async () => {
    const proxy = await startProxy({ plan: [rateLimited(7)], matches: isWrite });
    try {
        const tally = client({ baseUrl: proxy.url, maxRetries: 0 });
        const user = uniqueUser();
        const error = await tally.credits.add({ user_id: user, amount: 9 }).then(() => assert.fail("expected 429"), (e) => e);

        assert.ok(error instanceof RateLimitError);
        assert.ok(error instanceof TallyError);
        assert.equal(error.status, 429);
        assert.equal(error.code, "rate_limited");
        assert.equal(error.body.error, "rate_limited");
        assert.equal(error.retryAfterSeconds, 7);
        assert.equal(proxy.writes().length, 1);
        assert.equal((await client().credits.balance(user)).balance, 0);
    } finally {
        await proxy.close();
    }
});

test("503 is retried maxRetries times, then UnavailableError; nothing changed", async () => {
    await withProxy([unavailable, unavailable, unavailable], async (proxy, tally) => {
        const user = uniqueUser();
        const error = await tally.credits.add({ user_id: user, amount: 3 }).then(() => assert.fail("expected 503"), (e) => e);

        assert.ok(error instanceof UnavailableError);
        assert.equal(error.code, "unavailable");
        assert.equal(proxy.writes().length, 3, "maxRetries 2: three attempts");
        assert.equal(new Set(proxy.writes().map((w) => w.idempotencyKey)).size, 1);
        assert.equal((await client().credits.balance(user)).balance, 0);
    });
});

test("a 503 then success counts once", async () => {
    await withProxy([unavailable], async (proxy, tally) => {
        const user = uniqueUser();
        assert.equal((await tally.credits.add({ user_id: user, amount: 3 })).balance_after, 3);
        assert.equal(proxy.writes().length, 2);
    });
});

test("409 idempotency_in_progress is retried until the first request's answer replays", async () => {
    const inProgress = {
        status: 409,
        headers: { "retry-after": "0" },
        body: { success: false, error: "idempotency_in_progress", message: "in flight" },
    };
    await withProxy([{ drop: "after" }, inProgress], async (proxy, tally) => {
        const user = uniqueUser();
        const result = await tally.credits.add({ user_id: user, amount: 4 });

        assert.equal(proxy.writes().length, 3);
        assert.equal(result.balance_after, 4);
        assert.equal((await historyOf(user)).length, 1);
    });
});

test("other 4xx answers are never retried", async () => {
    await withProxy([], async (proxy, tally) => {
        const user = uniqueUser();
        const insufficient = await tally.credits.deduct({ user_id: user, amount: 1 }).then(assert.fail, (e) => e);
        assert.ok(insufficient instanceof InsufficientCreditsError);
        const invalid = await tally.credits.add({ user_id: user, amount: 0 }).then(assert.fail, (e) => e);
        assert.ok(invalid instanceof BadRequestError);
        assert.equal(proxy.writes().length, 2, "one attempt each");
    });
});

test("an async write retried after a lost answer gives one command", async () => {
    await withProxy([{ drop: "after" }], async (proxy, tally) => {
        const user = uniqueUser();
        const handle = await tally.credits.add({ user_id: user, amount: 8 }, { respondAsync: true });
        const result = await handle.wait();

        assert.equal(proxy.writes().length, 2);
        assert.equal(proxy.writes()[1].idempotencyKey, proxy.writes()[0].idempotencyKey);
        // The retry finds the command finished (or not) and answers its result (or a new 202).
        if (handle.command_id !== null) assert.equal((await tally.commands.get(handle.command_id)).status, "applied");
        assert.equal(result.balance_after, 8);
        assert.equal((await historyOf(user)).length, 1);
    });
});

test("a synchronous call answered 202 waits for the command and resolves to its result", async () => {
    await withProxy([{ respondAsync: true }], async (proxy, tally) => {
        const user = uniqueUser();
        const result = await tally.credits.add({ user_id: user, amount: 12 });

        assert.equal(proxy.writes().length, 1);
        assert.ok(proxy.requests.some((r) => r.method === "GET" && r.url.startsWith("/commands/")), "polled the command");
        assert.equal(result.success, true);
        assert.equal(result.balance_after, 12);
    });
});

test("a synchronous call answered 202 whose command is rejected throws the typed error", async () => {
    await withProxy([{ respondAsync: true }], async (_proxy, tally) => {
        const error = await tally.credits.deduct({ user_id: uniqueUser(), amount: 12 }).then(assert.fail, (e) => e);
        assert.ok(error instanceof InsufficientCreditsError);
        assert.equal(error.balance, 0);
    });
});

test("wait() on a command that stays pending gives up with WaitTimeoutError", async () => {
    const pending = (id) => ({ status: 200, body: { command_id: id, status: "pending", http_status: null, result: null } });
    const id = "0193a000-0000-7000-8000-000000000001";
    const proxy = await startProxy({
        plan: Array.from({ length: 50 }, () => pending(id)),
        matches: (req) => req.method === "GET" && req.url.startsWith("/commands/"),
    });
    try {
        const tally = client({ baseUrl: proxy.url });
        const handle = await tally.credits.add({ user_id: uniqueUser(), amount: 1 }, { respondAsync: true });
        const error = await handle.wait({ timeoutMs: 150, pollIntervalMs: 10 }).then(assert.fail, (e) => e);

        assert.ok(error instanceof WaitTimeoutError);
        assert.ok(error instanceof TallyError);
        assert.equal(error.code, "wait_timeout");
        assert.equal(error.commandId, handle.command_id);
    } finally {
        await proxy.close();
    }
});
