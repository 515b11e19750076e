#!/usr/bin/env node
// The packed tarball as a newcomer gets it: `npm pack`, then in empty folders
// `npm install --offline <tarball>`, then
//   - ESM: the README's quick-start example as index.mts, type-checked with
//     `tsc --strict --module nodenext` (and Node's types) and run with node;
//   - CommonJS: a require()-style consumer as index.cts, type-checked the same way without
//     Node's types, compiled and run;
//   - types.mts: what must NOT type-check (a string amount, a missing user_id, ...), each under
//     @ts-expect-error, so precise types are checked (tsc fails on an unused @ts-expect-error);
//   - the project README's webhook receiver as receiver.mts, type-checked the same way, compiled
//     and run: deliveries signed here with node:crypto must be answered 204 (a repeat too, acted
//     on once) and a forged one 400.
// No skipLibCheck anywhere: the SDK's own .d.ts are checked too. Needs TALLY_BASE_URL and
// TALLY_API_KEY of a running stack.
//
//   node scripts/consumers.mjs WORK_DIR

import { execFileSync, spawn } from "node:child_process";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const sdk = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const work = resolve(process.argv[2] ?? join(sdk, "build", "consumers"));
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

function run(cmd, args, cwd) {
    try {
        return execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    } catch (error) {
        console.error(`consumers: ${cmd} ${args.join(" ")} failed in ${cwd}:\n${error.stdout ?? ""}${error.stderr ?? ""}`);
        process.exit(1);
    }
}

/** The block between `<!-- NAME:start -->` and `<!-- NAME:end -->` of a README. */
function readmeBlock(path, name) {
    const readme = readFileSync(path, "utf8");
    const pattern = new RegExp(`<!-- ${name}:start -->\\s*\`\`\`(?:js|ts)\\n([\\s\\S]*?)\`\`\`\\s*<!-- ${name}:end -->`);
    const match = readme.match(pattern);
    if (!match) {
        console.error(`consumers: ${path} has no \`\`\`js or \`\`\`ts block between <!-- ${name}:start --> and <!-- ${name}:end -->`);
        process.exit(1);
    }
    return match[1];
}

/** The README's quick-start example. */
function readmeExample() {
    return readmeBlock(join(sdk, "README.md"), "example");
}

rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const packed = JSON.parse(run(npm, ["pack", "--json", "--pack-destination", work], sdk));
const tarball = join(work, packed[0].filename);
const files = packed[0].files.map((f) => f.path);
for (const required of ["dist/esm/index.js", "dist/esm/index.d.ts", "dist/cjs/index.js", "dist/cjs/index.d.ts", "dist/cjs/package.json", "README.md", "package.json"]) {
    if (!files.includes(required)) {
        console.error(`consumers: the tarball lacks ${required} (has: ${files.join(", ")})`);
        process.exit(1);
    }
}
console.log(`packed ${packed[0].filename}: ${files.length} files, ${packed[0].size} bytes`);

function project(name) {
    const dir = join(work, name);
    mkdirSync(dir);
    run(npm, ["install", "--offline", "--no-audit", "--no-fund", "--loglevel=error", tarball], dir);
    const installed = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    const deps = Object.keys(installed.dependencies ?? {});
    if (deps.length !== 1 || deps[0] !== "tally-credits-sdk") {
        console.error(`consumers: ${name}: unexpected dependencies ${deps.join(", ")}`);
        process.exit(1);
    }
    return dir;
}

const strict = ["--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022"];
const nodeTypes = ["--types", "node", "--typeRoots", join(sdk, "node_modules", "@types")];

// ESM: the README example, as a newcomer pastes it.
const esm = project("esm");
const example = readmeExample();
writeFileSync(join(esm, "index.mts"), example);
writeFileSync(join(esm, "example.mjs"), example);
writeFileSync(
    join(esm, "types.mts"),
    `import { Tally, BatchRejectedError, TallyError, webhooks, type AddParams, type AutoTopup, type AutoTopupAttempt, type BalanceResult, type BatchResult, type HistoryEntry, type Product, type WebhookEvent } from "tally-credits-sdk";
const tally = new Tally({ apiKey: "tk_x", baseUrl: "http://127.0.0.1:1" });
// @ts-expect-error a string amount
void tally.credits.add({ user_id: "u", amount: "500" });
// @ts-expect-error no user_id
void tally.credits.deduct({ amount: 5 });
// @ts-expect-error refund takes ledger_id, not user_id
void tally.credits.refund({ user_id: "u", amount: 5 });
// @ts-expect-error balance takes the user id itself
void tally.credits.balance({ user_id: "u" });
// @ts-expect-error an unknown option
void tally.credits.add({ user_id: "u", amount: 1 }, { idempotency_key: "k" });
// @ts-expect-error an endpoint needs its url
void tally.webhookEndpoints.create({ events: ["*"] });
// @ts-expect-error thresholds are numbers
void tally.credits.alerts.set({ thresholds: ["100"] });
// @ts-expect-error a product needs its mode
void tally.products.put("stripe", "price_x", { credits: 5 });
// @ts-expect-error credits are a number
void tally.products.put("stripe", "price_x", { credits: "5", mode: "one_time" });
// @ts-expect-error an auto top-up needs its card
void tally.credits.autoTopup.set({ user_id: "u", enabled: true, threshold: 1, credits: 1, amount: 1, currency: "usd" });
// @ts-expect-error whose auto top-up
void tally.credits.autoTopup.get({ credit_type: "credits" });
async function checks(): Promise<void> {
    const sync = await tally.credits.add({ user_id: "u", amount: 1 });
    const after: number = sync.balance_after;
    const handle = await tally.credits.deduct({ user_id: "u", amount: 1 }, { respondAsync: true });
    const id: string | null = handle.command_id;
    const waited: number = (await handle.wait({ timeoutMs: 10 })).balance_after;
    // @ts-expect-error a handle is not the result
    void handle.balance_after;
    const balance: BalanceResult = await tally.credits.balance("u");
    for await (const entry of tally.credits.historyAll("u")) {
        const e: HistoryEntry = entry;
        void e.amount;
    }
    const params: AddParams = { user_id: "u", amount: 1, metadata: { order: "42" }, credit_type: "image" };
    const ofImage: BalanceResult = await tally.credits.balance("u", { credit_type: "image" });
    const types: string[] = (await tally.credits.balances("u")).balances.map((b) => b.credit_type);
    const { results } = await tally.credits.batch([
        { op: "add", user_id: "u", amount: 1, credit_type: "image" },
        { op: "capture", hold_id: "h", idempotency_key: "k" },
    ]);
    for (const result of results) {
        if (result.ok && result.op === "capture") {
            const captured: number = result.body.captured;
            void captured;
        } else if (!result.ok) {
            const code: string = result.error.code;
            void code;
        }
        // @ts-expect-error a result's body is only typed once narrowed by op and ok
        void result.body.balance_after;
    }
    const batchHandle = await tally.credits.batch([{ op: "release", hold_id: "h" }], { atomic: true, respondAsync: true });
    const settled: BatchResult = await batchHandle.wait();
    // @ts-expect-error an operation takes its endpoint's fields only
    void tally.credits.batch([{ op: "refund", user_id: "u" }]);
    // @ts-expect-error an unknown op
    void tally.credits.batch([{ op: "transfer", user_id: "u", amount: 1 }]);
    try {
        await tally.credits.batch([{ op: "deduct", user_id: "u", amount: 1 }], { atomic: true });
    } catch (error) {
        if (error instanceof BatchRejectedError) {
            const failed: TallyError = error.failed;
            const index: number = error.failedIndex;
            void [failed, index];
        }
    }
    const secret: string | null | undefined = (await tally.webhookEndpoints.create({ url: "https://example.com" })).secret;
    const event: WebhookEvent = webhooks.verify("{}", { "webhook-id": "x" }, "whsec_AAAA");
    const sequence: number = event.sequence;
    const product: Product = await tally.products.put("polar", "p", { credits: 5, credit_type: "image", mode: "subscription" });
    const products: Product[] = await tally.products.list();
    await tally.products.delete("stripe", "price_x");
    const topup: AutoTopup = await tally.credits.autoTopup.set({
        user_id: "u", enabled: true, threshold: 100, credits: 1000, amount: 999, currency: "usd",
        stripe_customer_id: "cus_x", stripe_payment_method_id: "pm_x",
    });
    const attempt: AutoTopupAttempt | null | undefined = (await tally.credits.autoTopup.get({ user_id: "u", credit_type: "credits" })).last_attempt;
    await tally.credits.autoTopup.delete({ user_id: "u" });
    void [after, id, waited, balance, params, ofImage, types, settled, secret, sequence, product, products, topup, attempt];
}
void checks;
`,
);
run(process.execPath, [tsc, ...strict, ...nodeTypes, "--noEmit", "index.mts", "types.mts"], esm);
console.log("esm: tsc --strict --module nodenext: ok (README example and type precision)");
const indent = (prefix, text) => text.trimEnd().replace(/^/gm, prefix) + "\n";
process.stdout.write(indent("esm example | ", run(process.execPath, ["example.mjs"], esm)));

// The project README's webhook receiver: type-checked, compiled, run, and sent deliveries.
writeFileSync(join(esm, "receiver.mts"), readmeBlock(join(sdk, "..", "..", "README.md"), "receiver-example"));
run(process.execPath, [tsc, ...strict, ...nodeTypes, "--outDir", "receiver", "receiver.mts"], esm);
console.log("receiver: tsc --strict --module nodenext: ok (the project README's receiver)");
await runReceiver(join(esm, "receiver", "receiver.mjs"));

async function freePort() {
    const server = createServer();
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address();
    await new Promise((resolve) => server.close(resolve));
    return port;
}

/** Starts the receiver, sends it a signed delivery twice and a forged one, then stops it. */
async function runReceiver(script) {
    const secret = `whsec_${randomBytes(32).toString("base64")}`;
    const port = await freePort();
    const child = spawn(process.execPath, [script], {
        env: { ...process.env, PORT: String(port), TALLY_WEBHOOK_SECRET: secret },
        stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    const fail = (message) => {
        child.kill();
        console.error(`consumers: receiver: ${message}\n${output}`);
        process.exit(1);
    };
    const id = randomUUID();
    const body = JSON.stringify({
        id, type: "balance.low", created_at: new Date().toISOString(), app_id: randomUUID(),
        user_id: "user_abc123", sequence: 1, data: { threshold: 100, balance: 90, held: 0, available: 90 },
    });
    const timestamp = String(Math.floor(Date.now() / 1000));
    const key = Buffer.from(secret.slice("whsec_".length), "base64");
    const signature = createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64");
    const deliver = (signed) =>
        fetch(`http://127.0.0.1:${port}/`, {
            method: "POST",
            headers: { "content-type": "application/json", "webhook-id": id, "webhook-timestamp": timestamp, "webhook-signature": `v1,${signed}` },
            body,
        }).then((response) => response.status);
    let first;
    for (let attempt = 0; first === undefined; attempt++) {
        try {
            first = await deliver(signature);
        } catch {
            if (attempt >= 100) fail("did not listen within 10 s");
            await new Promise((resolve) => setTimeout(resolve, 100));
        }
    }
    const repeat = await deliver(signature);
    const forged = await deliver(createHmac("sha256", randomBytes(32)).update(body).digest("base64"));
    child.kill();
    await new Promise((resolve) => child.once("exit", resolve));
    const actedOn = output.split("\n").filter((line) => line.includes("user_abc123 is low on credits")).length;
    if (first !== 204 || repeat !== 204 || forged !== 400 || actedOn !== 1) {
        fail(`answers ${first}, ${repeat} (repeat), ${forged} (forged) and ${actedOn} events acted on; expected 204, 204, 400 and 1`);
    }
    console.log("receiver | a delivery 204, its repeat 204 (acted on once), a forged one 400");
}

// CommonJS, without Node's types: only the SDK's own declarations and the default lib.
const cjs = project("cjs");
writeFileSync(
    join(cjs, "index.cts"),
    `import { Tally, TallyError, InsufficientCreditsError } from "tally-credits-sdk";
declare const process: { env: Record<string, string | undefined>; exitCode?: number };

async function main(): Promise<void> {
    const tally = new Tally({ apiKey: process.env["TALLY_API_KEY"], baseUrl: process.env["TALLY_BASE_URL"], maxRetries: 1 });
    const user = "cjs_" + Date.now() + "_" + Math.random().toString(36).slice(2);
    const added = await tally.credits.add({ user_id: user, amount: 3 });
    try {
        await tally.credits.deduct({ user_id: user, amount: 4 });
        throw new Error("expected InsufficientCreditsError");
    } catch (error) {
        if (!(error instanceof InsufficientCreditsError) || !(error instanceof TallyError) || error.balance !== 3) throw error;
    }
    const { balance } = await tally.credits.balance(user);
    if (balance !== added.balance_after) throw new Error("balance " + balance);
    console.log("cjs consumer: balance " + balance + ", 402 typed");
}
main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
});
`,
);
run(process.execPath, [tsc, ...strict, "--outDir", "out", "index.cts"], cjs);
console.log("cjs: tsc --strict --module nodenext (no @types/node): ok");
process.stdout.write(indent("cjs | ", run(process.execPath, [join("out", "index.cjs")], cjs)));
