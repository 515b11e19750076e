// webhooks.verify against signatures made by the `standardwebhooks` package and by node:crypto,
// its HMAC-SHA256 against node:crypto, and what it refuses.

import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { test } from "node:test";

import { Webhook } from "standardwebhooks";

import { TallyError, verifyWebhook, webhooks, WebhookVerificationError } from "../dist/esm/index.js";
import { hmacSha256 } from "../dist/esm/webhooks.js";

const SECRET = `whsec_${randomBytes(32).toString("base64")}`;
const EVENT = {
    id: "01936b2e-7c4a-7d2e-9f3a-2b1c0d9e8f7a",
    type: "balance.low",
    created_at: "2024-05-06T07:08:09.123Z",
    app_id: "01936b2e-0000-7000-8000-000000000001",
    user_id: "user_abc123",
    sequence: 17,
    data: { threshold: 100, balance: 90, held: 0, available: 90 },
};
const BODY = JSON.stringify(EVENT);

/** The headers Tally sends, signed with node:crypto as the contract describes. */
function signedByHand(body, { secret = SECRET, id = EVENT.id, at = Math.floor(Date.now() / 1000) } = {}) {
    const key = Buffer.from(secret.slice("whsec_".length), "base64");
    const signature = createHmac("sha256", key).update(`${id}.${at}.${body}`).digest("base64");
    return { "webhook-id": id, "webhook-timestamp": String(at), "webhook-signature": `v1,${signature}` };
}

function refusal(run) {
    try {
        run();
    } catch (error) {
        assert.ok(error instanceof WebhookVerificationError && error instanceof TallyError, String(error));
        return error.code;
    }
    assert.fail("expected a WebhookVerificationError");
}

test("a delivery signed by the standardwebhooks package verifies and parses", () => {
    const now = new Date();
    const signature = new Webhook(SECRET).sign(EVENT.id, now, BODY);
    const headers = {
        "webhook-id": EVENT.id,
        "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
        "webhook-signature": signature,
    };

    const event = webhooks.verify(BODY, headers, SECRET);

    assert.deepEqual(event, EVENT);
    assert.deepEqual(verifyWebhook(new TextEncoder().encode(BODY), headers, SECRET), EVENT);
});

test("what verify accepts, standardwebhooks accepts too", () => {
    const headers = signedByHand(BODY);
    assert.deepEqual(new Webhook(SECRET).verify(BODY, headers), EVENT);
    assert.deepEqual(webhooks.verify(BODY, headers, SECRET), EVENT);
});

test("headers are read from a fetch Headers or an object with names in any case", () => {
    const signed = signedByHand(BODY);
    const fetchHeaders = new Headers(signed);
    const shouting = Object.fromEntries(Object.entries(signed).map(([name, value]) => [name.toUpperCase(), value]));
    assert.equal(webhooks.verify(BODY, fetchHeaders, SECRET).id, EVENT.id);
    assert.equal(webhooks.verify(BODY, shouting, SECRET).id, EVENT.id);
});

test("during a rotation any one of several signatures is enough", () => {
    const previous = `whsec_${randomBytes(32).toString("base64")}`;
    const signed = signedByHand(BODY);
    const old = signedByHand(BODY, { secret: previous, at: signed["webhook-timestamp"] });
    const both = { ...signed, "webhook-signature": `${old["webhook-signature"]} ${signed["webhook-signature"]}` };
    assert.equal(webhooks.verify(BODY, both, SECRET).id, EVENT.id);
    assert.equal(webhooks.verify(BODY, both, previous).id, EVENT.id);
    const unknownVersion = { ...signed, "webhook-signature": signed["webhook-signature"].replace("v1,", "v2,") };
    assert.equal(refusal(() => webhooks.verify(BODY, unknownVersion, SECRET)), "invalid_signature");
});

test("a tampered body, another secret or another id is refused", () => {
    const signed = signedByHand(BODY);
    const other = `whsec_${randomBytes(32).toString("base64")}`;
    assert.equal(refusal(() => webhooks.verify(BODY.replace("90", "9000"), signed, SECRET)), "invalid_signature");
    assert.equal(refusal(() => webhooks.verify(BODY, signed, other)), "invalid_signature");
    const replayed = { ...signed, "webhook-id": "another-id" };
    assert.equal(refusal(() => webhooks.verify(BODY, replayed, SECRET)), "invalid_signature");
});

test("a timestamp more than 5 minutes away, either way, is refused unless the tolerance says", () => {
    const now = Math.floor(Date.now() / 1000);
    const old = signedByHand(BODY, { at: now - 301 });
    const ahead = signedByHand(BODY, { at: now + 301 });
    assert.equal(refusal(() => webhooks.verify(BODY, old, SECRET)), "timestamp_too_old");
    assert.equal(refusal(() => webhooks.verify(BODY, ahead, SECRET)), "timestamp_too_new");
    assert.equal(webhooks.verify(BODY, old, SECRET, { toleranceSeconds: 600 }).id, EVENT.id);
    assert.equal(webhooks.verify(BODY, old, SECRET, { nowMs: (now - 300) * 1000 }).id, EVENT.id);
    const garbled = { ...signedByHand(BODY), "webhook-timestamp": "soon" };
    assert.equal(refusal(() => webhooks.verify(BODY, garbled, SECRET)), "invalid_timestamp");
});

test("missing headers, a body that is not an event and a secret that is not whsec_ base64", () => {
    const signed = signedByHand(BODY);
    const { "webhook-signature": _, ...unsigned } = signed;
    assert.equal(refusal(() => webhooks.verify(BODY, unsigned, SECRET)), "missing_headers");
    assert.equal(refusal(() => webhooks.verify("[1]", signedByHand("[1]"), SECRET)), "invalid_body");
    assert.equal(refusal(() => webhooks.verify("not json", signedByHand("not json"), SECRET)), "invalid_body");
    assert.throws(() => webhooks.verify(BODY, signed, "whsec_***"), TypeError);
});

test("HMAC-SHA256 matches node:crypto for keys and messages of every awkward length", () => {
    // Block edges (55, 56, 63, 64, 65 bytes), keys longer than a block, multi-byte text.
    const lengths = [0, 1, 3, 31, 32, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 70_000];
    for (const keyLength of [1, 24, 32, 64, 65, 100]) {
        for (const length of lengths) {
            const key = randomBytes(keyLength);
            const message = randomBytes(length);
            const expected = createHmac("sha256", key).update(message).digest("hex");
            assert.equal(Buffer.from(hmacSha256(key, message)).toString("hex"), expected, `key ${keyLength}, message ${length}`);
        }
    }
    // RFC 4231, test case 2.
    const rfc = hmacSha256(new TextEncoder().encode("Jefe"), new TextEncoder().encode("what do ya want for nothing?"));
    assert.equal(Buffer.from(rfc).toString("hex"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
});

test("fixed vectors: Standard Webhooks' own example, and a ping as Tally sends it", () => {
    // The example of the Standard Webhooks specification.
    const specKey = Buffer.from("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "base64");
    const specMessage = new TextEncoder().encode('msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}');
    assert.equal(Buffer.from(hmacSha256(specKey, specMessage)).toString("base64"), "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");

    // A ping, signed once with Python's hmac module (the same vector as the Rust SDK's test).
    const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const body =
        '{"id":"01936b2e-7c4a-7d2e-9f3a-2b1c0d9e8f7a","type":"ping","created_at":"2024-05-06T07:08:09.123Z",' +
        '"app_id":"01936b2e-0000-7000-8000-000000000001","user_id":null,"sequence":1,"data":{}}';
    const headers = {
        "webhook-id": "01936b2e-7c4a-7d2e-9f3a-2b1c0d9e8f7a",
        "webhook-timestamp": "1714979289",
        "webhook-signature": "v1,5z+cp9Jm/TvbWT5sQkyG6q7TufNrOnrp40tmf+ZIa7Y=",
    };
    const event = webhooks.verify(body, headers, secret, { nowMs: 1714979289 * 1000 });
    assert.equal(event.type, "ping");
    assert.equal(event.user_id, null);
    assert.equal(refusal(() => webhooks.verify(body, headers, secret)), "timestamp_too_old");
});
