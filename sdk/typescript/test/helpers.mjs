// Shared by the tests: a client on the real stack (TALLY_BASE_URL / TALLY_API_KEY, set by
// scripts/test), unique user ids, and a proxy that injects failures in front of the ingress.

import { randomUUID } from "node:crypto";
import http from "node:http";

import { Tally } from "../dist/esm/index.js";

export const BASE_URL = process.env.TALLY_BASE_URL;
export const API_KEY = process.env.TALLY_API_KEY;
if (!BASE_URL || !API_KEY) {
    throw new Error("TALLY_BASE_URL and TALLY_API_KEY must point at a running stack (sdk/typescript/scripts/test sets them)");
}

export function client(options = {}) {
    return new Tally({ apiKey: API_KEY, baseUrl: BASE_URL, ...options });
}

export function uniqueUser(prefix = "user") {
    return `${prefix}_${randomUUID()}`;
}

/**
 * Starts a proxy in front of the ingress. `plan` says what to do with the first requests that
 * `matches` (default: every request), one action each; later requests are forwarded as they are:
 *   { drop: "before" }           close the connection without forwarding (the server never sees it)
 *   { drop: "after" }            forward, let the server answer, then close the connection unanswered
 *   { hang: true }               never answer and never forward
 *   { respondAsync: true }       forward with `Prefer: respond-async`, as if the sync call timed out
 *   { status, body, headers }    answer this instead of forwarding
 * `requests` records every request the proxy saw: { method, url, idempotencyKey, at }.
 */
export async function startProxy({ plan = [], matches = () => true } = {}) {
    const target = new URL(BASE_URL);
    const requests = [];
    const hung = new Set();
    const queue = [...plan];
    const server = http.createServer((req, res) => {
        const chunks = [];
        req.on("data", (c) => chunks.push(c));
        req.on("end", () => {
            const body = Buffer.concat(chunks);
            requests.push({
                method: req.method,
                url: req.url,
                idempotencyKey: req.headers["idempotency-key"],
                at: performance.now(),
            });
            const action = matches(req) ? queue.shift() : undefined;
            if (action?.drop === "before") return req.socket.destroy();
            if (action?.hang) return hung.add(res);
            if (action?.status) {
                res.writeHead(action.status, { "content-type": "application/json", ...(action.headers ?? {}) });
                return res.end(JSON.stringify(action.body ?? {}));
            }
            const headers = { ...req.headers, host: target.host };
            if (action?.respondAsync) headers.prefer = "respond-async";
            const upstream = http.request(
                {
                    host: target.hostname,
                    port: target.port,
                    method: req.method,
                    path: req.url,
                    headers,
                },
                (up) => {
                    const upChunks = [];
                    up.on("data", (c) => upChunks.push(c));
                    up.on("end", () => {
                        if (action?.drop === "after") return req.socket.destroy();
                        res.writeHead(up.statusCode ?? 502, up.headers);
                        res.end(Buffer.concat(upChunks));
                    });
                },
            );
            upstream.on("error", () => req.socket.destroy());
            upstream.end(body);
        });
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${server.address().port}`;
    return {
        url,
        requests,
        writes: () => requests.filter((r) => r.method === "POST"),
        close: async () => {
            for (const res of hung) res.socket?.destroy();
            server.closeAllConnections();
            await new Promise((resolve) => server.close(resolve));
        },
    };
}

/** Runs `body(proxy, tally)` with a client behind a proxy whose `plan` applies to writes. */
export async function withProxy(plan, body) {
    const proxy = await startProxy({ plan, matches: (req) => req.method === "POST" });
    try {
        return await body(proxy, client({ baseUrl: proxy.url }));
    } finally {
        await proxy.close();
    }
}

/** Every entry of a user's history, read directly (one big page). */
export async function historyOf(user_id) {
    const page = await client().credits.history({ user_id, limit: 200 });
    return page.entries;
}
