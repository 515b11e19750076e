// Products (what a provider's price or product buys) and users' auto top-up settings, against
// the real stack.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { BadRequestError, NotFoundError } from "../dist/esm/index.js";
import { client, uniqueUser } from "./helpers.mjs";

test("a product is put, listed, replaced and deleted; a subscription cannot expire", async () => {
    const tally = client();
    const price = `price_${randomUUID().replaceAll("-", "")}`;
    const polar = randomUUID();

    const pack = await tally.products.put("stripe", price, { credits: 500, mode: "one_time", expires_in_days: 30 });
    assert.deepEqual(
        { ...pack, updated_at: undefined },
        {
            provider: "stripe",
            product_id: price,
            credits: 500,
            credit_type: "credits",
            mode: "one_time",
            expires_in_days: 30,
            updated_at: undefined,
        },
    );
    assert.ok(!Number.isNaN(Date.parse(pack.updated_at)));
    const monthly = await tally.products.put("polar", polar, { credits: 1000, credit_type: "image", mode: "subscription" });
    assert.deepEqual([monthly.credit_type, monthly.mode, monthly.expires_in_days], ["image", "subscription", null]);

    const mine = (await tally.products.list()).filter((p) => p.product_id === price || p.product_id === polar);
    assert.deepEqual(mine.map((p) => [p.provider, p.product_id]), [["polar", polar], ["stripe", price]]);

    const replaced = await tally.products.put("stripe", price, { credits: 600, mode: "one_time" });
    assert.deepEqual([replaced.credits, replaced.expires_in_days], [600, null]);
    assert.equal((await tally.products.list()).find((p) => p.product_id === price)?.credits, 600);

    await assert.rejects(
        tally.products.put("stripe", price, { credits: 600, mode: "subscription", expires_in_days: 30 }),
        (error) => error instanceof BadRequestError && error.status === 400,
    );

    await tally.products.delete("stripe", price);
    await tally.products.delete("polar", polar);
    const left = (await tally.products.list()).filter((p) => p.product_id === price || p.product_id === polar);
    assert.deepEqual(left, []);
    await assert.rejects(
        tally.products.delete("stripe", price),
        (error) => error instanceof NotFoundError && error.code === "not_found",
    );
});

test("auto top-up: set, read back with no attempt yet, and deleted", async () => {
    const tally = client();
    const user = uniqueUser();
    const credit_type = `t${Date.now()}`;
    const settings = {
        user_id: user,
        credit_type,
        enabled: true,
        threshold: 100,
        credits: 1000,
        amount: 999,
        currency: "usd",
        stripe_customer_id: "cus_test123",
        stripe_payment_method_id: "pm_test123",
        max_per_month: 5,
    };

    const set = await tally.credits.autoTopup.set(settings);
    assert.deepEqual(
        { ...set, updated_at: undefined },
        {
            ...settings,
            consecutive_failures: 0,
            disabled_reason: null,
            last_attempt: null,
            updated_at: undefined,
        },
    );
    const read = await tally.credits.autoTopup.get({ user_id: user, credit_type });
    assert.equal(read.consecutive_failures, 0);
    assert.equal(read.last_attempt, null);
    assert.deepEqual(read, set);
    // The default credit type is another setting: this user has none.
    await assert.rejects(tally.credits.autoTopup.get({ user_id: user }), NotFoundError);

    const defaults = await tally.credits.autoTopup.set({ ...settings, credit_type: undefined, max_per_month: undefined, enabled: false });
    assert.deepEqual([defaults.credit_type, defaults.max_per_month, defaults.enabled], ["credits", 10, false]);
    await tally.credits.autoTopup.delete({ user_id: user });

    await tally.credits.autoTopup.delete({ user_id: user, credit_type });
    await assert.rejects(
        tally.credits.autoTopup.get({ user_id: user, credit_type }),
        (error) => error instanceof NotFoundError && error.code === "not_found",
    );
    await assert.rejects(tally.credits.autoTopup.delete({ user_id: user, credit_type }), NotFoundError);
    await assert.rejects(tally.credits.autoTopup.set({ ...settings, threshold: 0 }), BadRequestError);
});
