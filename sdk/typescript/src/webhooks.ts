// Verifying the events Tally sends to your webhook endpoints (Standard Webhooks).
//
// Each delivery carries `webhook-id` (the event id, the same on every attempt),
// `webhook-timestamp` (Unix seconds) and `webhook-signature`: one or more space-separated
// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the bytes the endpoint's
// `whsec_<base64>` secret encodes (two while a secret is being rotated).
//
// HMAC-SHA256 is computed here (FIPS 180-4, RFC 2104), synchronously and with no dependency,
// so `verify` runs the same in Node, Deno, Bun and edge runtimes; the tests check it against
// node:crypto and the `standardwebhooks` package.

import { TallyError } from "./errors.js";
import type { components } from "./schema.js";

/** An event as Tally sends it: `{ id, type, created_at, app_id, user_id, sequence, data }`. */
export type WebhookEvent = components["schemas"]["EventEnvelope"];

/** How far a delivery's timestamp may be from now, either way (Standard Webhooks' default). */
export const DEFAULT_TOLERANCE_SECONDS = 300;
const SECRET_PREFIX = "whsec_";

/** What `verify` found wrong, in `WebhookVerificationError.code`. */
export type WebhookVerificationCode =
    | "missing_headers"
    | "invalid_timestamp"
    | "timestamp_too_old"
    | "timestamp_too_new"
    | "invalid_signature"
    | "invalid_body";

/**
 * `webhooks.verify` refused a delivery: a missing header, a timestamp outside the tolerance,
 * no matching signature, or a body that is not a JSON event (`.code` says which). Answer it
 * with a 400; never act on its body.
 */
export class WebhookVerificationError extends TallyError {
    declare readonly code: WebhookVerificationCode;

    constructor(message: string, code: WebhookVerificationCode) {
        super(message, { status: 0, code, body: null });
    }
}

/**
 * A request's headers as servers give them: a fetch `Headers` (or anything with `get`), or a
 * plain object such as Node's `request.headers` (names in any case).
 */
export type WebhookHeaders =
    | { get(name: string): string | null }
    | Readonly<Record<string, string | readonly string[] | undefined>>;

export interface VerifyOptions {
    /** How far `webhook-timestamp` may be from now, in seconds, either way. Default 300. */
    toleranceSeconds?: number | undefined;
    /** The time to check the timestamp against, in milliseconds since the epoch. Default now. */
    nowMs?: number | undefined;
}

/**
 * Checks a delivery's signature and timestamp on its raw body, then parses it.
 *
 * `body`: the request body exactly as received (a string, or its bytes), never a re-serialised
 * object. `headers`: the request's headers. `secret`: the endpoint's `whsec_...` secret.
 * Throws WebhookVerificationError when a header is missing, the timestamp is more than
 * `toleranceSeconds` away from now, no `v1` signature matches (compared in constant time), or
 * the body is not a JSON event; TypeError when `secret` is not a `whsec_` secret.
 */
export function verify(
    body: string | Uint8Array,
    headers: WebhookHeaders,
    secret: string,
    options: VerifyOptions = {},
): WebhookEvent {
    const key = secretKey(secret);
    const id = header(headers, "webhook-id");
    const timestamp = header(headers, "webhook-timestamp");
    const signatures = header(headers, "webhook-signature");
    if (!id || !timestamp || !signatures) {
        throw new WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header",
            "missing_headers",
        );
    }
    checkTimestamp(timestamp, options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS, options.nowMs ?? Date.now());
    const raw = typeof body === "string" ? new TextEncoder().encode(body) : body;
    const expected = hmacSha256(key, concat(new TextEncoder().encode(`${id}.${timestamp}.`), raw));
    // Every candidate is compared, matched or not, each in constant time.
    let matched = false;
    for (const candidate of v1Signatures(signatures)) {
        if (equalConstantTime(expected, candidate)) matched = true;
    }
    if (!matched) {
        throw new WebhookVerificationError("no webhook-signature matches the body", "invalid_signature");
    }
    let parsed: unknown;
    try {
        parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    } catch (error) {
        throw new WebhookVerificationError(`the body is not JSON: ${String(error)}`, "invalid_body");
    }
    if (!isEvent(parsed)) {
        throw new WebhookVerificationError("the body is not an event object with an id and a type", "invalid_body");
    }
    return parsed;
}

/** `import { webhooks } from "tally-credits-sdk"; webhooks.verify(body, headers, secret)`. */
export const webhooks = { verify } as const;

function isEvent(value: unknown): value is WebhookEvent {
    if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
    const event = value as { id?: unknown; type?: unknown };
    return typeof event.id === "string" && typeof event.type === "string";
}

function header(headers: WebhookHeaders, name: string): string | undefined {
    if (typeof (headers as { get?: unknown }).get === "function") {
        return (headers as { get(name: string): string | null }).get(name) ?? undefined;
    }
    const record = headers as Readonly<Record<string, string | readonly string[] | undefined>>;
    for (const [key, value] of Object.entries(record)) {
        if (key.toLowerCase() !== name) continue;
        return typeof value === "string" ? value : value?.join(" ");
    }
    return undefined;
}

function checkTimestamp(timestamp: string, toleranceSeconds: number, nowMs: number): void {
    if (!/^\d+$/.test(timestamp)) {
        throw new WebhookVerificationError(
            `webhook-timestamp ${JSON.stringify(timestamp)} is not Unix seconds`,
            "invalid_timestamp",
        );
    }
    const ageSeconds = nowMs / 1000 - Number(timestamp);
    if (ageSeconds > toleranceSeconds) {
        throw new WebhookVerificationError(
            `webhook-timestamp is ${Math.round(ageSeconds)} s old (tolerance ${toleranceSeconds} s)`,
            "timestamp_too_old",
        );
    }
    if (-ageSeconds > toleranceSeconds) {
        throw new WebhookVerificationError(
            `webhook-timestamp is ${Math.round(-ageSeconds)} s ahead (tolerance ${toleranceSeconds} s)`,
            "timestamp_too_new",
        );
    }
}

function secretKey(secret: string): Uint8Array {
    const encoded = secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret;
    const key = base64Decode(encoded);
    if (key === undefined) throw new TypeError("the webhook secret is not whsec_ followed by base64");
    if (key.length === 0) throw new TypeError("the webhook secret is empty");
    return key;
}

/** The decoded `v1` signatures of a webhook-signature header; other versions and malformed
 * entries are skipped. */
function v1Signatures(header: string): Uint8Array[] {
    const decoded: Uint8Array[] = [];
    for (const entry of header.split(/\s+/)) {
        const comma = entry.indexOf(",");
        if (comma < 0 || entry.slice(0, comma) !== "v1") continue;
        const signature = base64Decode(entry.slice(comma + 1));
        if (signature !== undefined && signature.length > 0) decoded.push(signature);
    }
    return decoded;
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Standard base64 (padding optional); undefined for anything else. */
function base64Decode(text: string): Uint8Array | undefined {
    const unpadded = text.replace(/={1,2}$/, "");
    if (unpadded.length % 4 === 1 || !/^[A-Za-z0-9+/]*$/.test(unpadded)) return undefined;
    const out = new Uint8Array(Math.floor((unpadded.length * 3) / 4));
    let bits = 0;
    let buffer = 0;
    let at = 0;
    for (const char of unpadded) {
        buffer = (buffer << 6) | BASE64.indexOf(char);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[at++] = (buffer >> bits) & 0xff;
        }
    }
    return out;
}

function equalConstantTime(a: Uint8Array, b: Uint8Array): boolean {
    // Lengths are no secret (every v1 signature is 32 bytes); the bytes are compared in full.
    if (a.length !== b.length) return false;
    let difference = 0;
    for (let i = 0; i < a.length; i++) difference |= a[i]! ^ b[i]!;
    return difference === 0;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
    const out = new Uint8Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
}

// --- HMAC-SHA256 ------------------------------------------------------------------------------

const SHA256_BLOCK_BYTES = 64;

/** SHA-256's round constants: the first 32 bits of the fractional parts of the cube roots of
 * the first 64 primes. */
const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

function sha256(message: Uint8Array): Uint8Array {
    const state = new Uint32Array([
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]);
    // The message, a 1 bit, zeros, and its length in bits (64-bit big-endian) to a whole block.
    const blocks = Math.ceil((message.length + 9) / SHA256_BLOCK_BYTES);
    const padded = new Uint8Array(blocks * SHA256_BLOCK_BYTES);
    padded.set(message);
    padded[message.length] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(message.length / 0x20000000));
    view.setUint32(padded.length - 4, (message.length * 8) >>> 0);
    const w = new Uint32Array(64);
    const rotr = (x: number, n: number) => (x >>> n) | (x << (32 - n));
    for (let offset = 0; offset < padded.length; offset += SHA256_BLOCK_BYTES) {
        for (let t = 0; t < 16; t++) w[t] = view.getUint32(offset + t * 4);
        for (let t = 16; t < 64; t++) {
            const w15 = w[t - 15]!;
            const w2 = w[t - 2]!;
            const s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >>> 3);
            const s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >>> 10);
            w[t] = (w[t - 16]! + s0 + w[t - 7]! + s1) >>> 0;
        }
        let [a, b, c, d, e, f, g, h] = state as unknown as [number, number, number, number, number, number, number, number];
        for (let t = 0; t < 64; t++) {
            const s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
            const choice = (e & f) ^ (~e & g);
            const temp1 = (h + s1 + choice + K[t]! + w[t]!) >>> 0;
            const s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
            const majority = (a & b) ^ (a & c) ^ (b & c);
            const temp2 = (s0 + majority) >>> 0;
            h = g;
            g = f;
            f = e;
            e = (d + temp1) >>> 0;
            d = c;
            c = b;
            b = a;
            a = (temp1 + temp2) >>> 0;
        }
        state[0] = (state[0]! + a) >>> 0;
        state[1] = (state[1]! + b) >>> 0;
        state[2] = (state[2]! + c) >>> 0;
        state[3] = (state[3]! + d) >>> 0;
        state[4] = (state[4]! + e) >>> 0;
        state[5] = (state[5]! + f) >>> 0;
        state[6] = (state[6]! + g) >>> 0;
        state[7] = (state[7]! + h) >>> 0;
    }
    const digest = new Uint8Array(32);
    const out = new DataView(digest.buffer);
    state.forEach((word, i) => out.setUint32(i * 4, word));
    return digest;
}

/** HMAC-SHA256 (RFC 2104) of `message` keyed with `key`. @internal */
export function hmacSha256(key: Uint8Array, message: Uint8Array): Uint8Array {
    const block = new Uint8Array(SHA256_BLOCK_BYTES);
    block.set(key.length > SHA256_BLOCK_BYTES ? sha256(key) : key);
    const inner = new Uint8Array(SHA256_BLOCK_BYTES);
    const outer = new Uint8Array(SHA256_BLOCK_BYTES);
    for (let i = 0; i < SHA256_BLOCK_BYTES; i++) {
        inner[i] = block[i]! ^ 0x36;
        outer[i] = block[i]! ^ 0x5c;
    }
    return sha256(concat(outer, sha256(concat(inner, message))));
}
