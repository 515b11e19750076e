// The CommonJS build, loaded with require(), against the real stack.

const assert = require("node:assert/strict");
const { randomUUID } = require("node:crypto");
const { test } = require("node:test");

const sdk = require("../dist/cjs/index.js");

test("require() gives the same surface and error classes", async () => {
    const tally = new sdk.Tally({ apiKey: process.env.TALLY_API_KEY, baseUrl: process.env.TALLY_BASE_URL });
    const user = `user_${randomUUID()}`;
    await tally.credits.add({ user_id: user, amount: 5 });
    assert.equal((await tally.credits.balance(user)).balance, 5);

    const error = await tally.credits.deduct({ user_id: user, amount: 6 }).then(assert.fail, (e) => e);
    assert.ok(error instanceof sdk.InsufficientCreditsError);
    assert.ok(error instanceof sdk.TallyError);
    assert.equal(error.balance, 5);
    assert.equal(sdk.default, sdk.Tally);
});
