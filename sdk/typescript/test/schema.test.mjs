// src/schema.ts (the SDK's types) must be what `npm run generate` makes from the running
// ingress's /openapi.json; when the API changes, regenerate it.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import { REGENERATE_COMMAND, SCHEMA_FILE, generate, loadDocument } from "../scripts/generate.mjs";
import { BASE_URL } from "./helpers.mjs";

test("src/schema.ts is up to date with the ingress's /openapi.json", async () => {
    const fresh = await generate(await loadDocument(`${BASE_URL}/openapi.json`));
    const current = await readFile(SCHEMA_FILE, "utf8");
    assert.ok(current === fresh, `src/schema.ts is stale: regenerate it with ${REGENERATE_COMMAND}`);
});
