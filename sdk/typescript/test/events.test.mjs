// Webhook endpoints, their deliveries, the events log and balance alerts, against the real
// stack (which allows endpoints on 127.0.0.1: TALLY_WEBHOOK_ALLOW_PRIVATE=true).

import assert from "node:assert/strict";
import { test } from "node:test";

import { BadRequestError, NotFoundError } from "../dist/esm/index.js";
import { client, uniqueUser } from "./helpers.mjs";

// Nothing listens there; these tests read what the API records.
const RECEIVER = "http://127.0.0.1:9/tally-events";

test("an endpoint is created with its secret once, listed, changed, rotated and deleted", async () => {
    const tally = client();
    const created = await tally.webhookEndpoints.create({
        url: RECEIVER,
        events: ["balance.low", "credits.added"],
        description: "billing emails",
    });
    try {
        assert.match(created.secret ?? "", /^whsec_/);
        assert.deepEqual(created.events, ["balance.low", "credits.added"]);
        assert.equal(created.enabled, true);

        const listed = await tally.webhookEndpoints.list();
        assert.ok(listed.endpoints.some((e) => e.id === created.id && e.secret === undefined));
        const read = await tally.webhookEndpoints.get(created.id);
        assert.equal(read.description, "billing emails");

        const disabled = await tally.webhookEndpoints.update(created.id, { enabled: false, description: null });
        assert.equal(disabled.enabled, false);
        assert.equal(disabled.description, null);

        const rotated = await tally.webhookEndpoints.rotateSecret(created.id);
        assert.match(rotated.secret, /^whsec_/);
        assert.notEqual(rotated.secret, created.secret);
    } finally {
        await tally.webhookEndpoints.delete(created.id);
    }
    await assert.rejects(tally.webhookEndpoints.get(created.id), NotFoundError);
    await assert.rejects(
        tally.webhookEndpoints.create({ url: RECEIVER, events: ["balance.high"] }),
        (error) => error instanceof BadRequestError && error.body?.field === "events",
    );
});

test("a test ping is an event of the log and a delivery of its endpoint, which can be redelivered", async () => {
    const tally = client();
    const endpoint = await tally.webhookEndpoints.create({ url: RECEIVER });
    try {
        const { event_id } = await tally.webhookEndpoints.test(endpoint.id);

        const event = await tally.events.get(event_id);
        assert.equal(event.type, "ping");
        assert.equal(event.user_id, null);
        const pings = await tally.events.list({ type: "ping", limit: 200 });
        assert.ok(pings.events.some((e) => e.id === event_id));
        const page = await tally.webhookEndpoints.deliveries(endpoint.id);
        assert.equal(page.deliveries.length, 1);
        const [delivery] = page.deliveries;
        assert.equal(delivery.event_id, event_id);
        assert.equal(delivery.event_type, "ping");
        const all = [];
        for await (const d of tally.webhookEndpoints.deliveriesAll(endpoint.id)) all.push(d.id);
        assert.deepEqual(all, [delivery.id]);

        const redelivered = await tally.webhookDeliveries.redeliver(delivery.id);
        assert.equal(redelivered.id, delivery.id);
        assert.equal(redelivered.status, "pending");
        let seen = 0;
        for await (const e of tally.events.listAll({ type: "ping" })) if (e.id === event_id) seen++;
        assert.equal(seen, 1);
    } finally {
        await tally.webhookEndpoints.delete(endpoint.id);
    }
});

test("alerts: the app's default, a user's own list that replaces it, and dropping it", async () => {
    const tally = client();
    const user = uniqueUser();
    const credit_type = `t${Date.now()}`;

    const app = await tally.credits.alerts.set({ credit_type, thresholds: [100, 1000, 100] });
    assert.deepEqual(app, { user_id: null, credit_type, thresholds: [1000, 100] });
    assert.equal((await tally.credits.alerts.get({ user_id: user, credit_type })).source, "app");

    await tally.credits.alerts.set({ user_id: user, credit_type, thresholds: [] });
    const own = await tally.credits.alerts.get({ user_id: user, credit_type });
    assert.deepEqual([own.source, own.thresholds], ["user", []]);

    await tally.credits.alerts.delete({ user_id: user, credit_type });
    assert.equal((await tally.credits.alerts.get({ user_id: user, credit_type })).source, "app");
    await tally.credits.alerts.delete({ credit_type });
    assert.equal((await tally.credits.alerts.get({ credit_type })).source, "none");
    await assert.rejects(tally.credits.alerts.set({ thresholds: [0] }), BadRequestError);
});
