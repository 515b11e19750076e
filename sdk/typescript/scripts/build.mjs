#!/usr/bin/env node
// Builds dist/esm (ES modules) and dist/cjs (CommonJS), each with its .d.ts, from src/ with tsc.
// Both are compiled with `module: nodenext`; the CommonJS build compiles a copy of src/ that
// sits next to a {"type": "commonjs"} package.json, and dist/cjs gets the same marker, so
// Node and TypeScript both read dist/cjs as CommonJS.

import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const run = (args) => {
    try {
        execFileSync(process.execPath, [tsc, ...args], { cwd: root, stdio: "inherit" });
    } catch {
        console.error(`build: tsc ${args.join(" ")} failed (errors above)`);
        process.exit(1);
    }
};

rmSync(join(root, "dist"), { recursive: true, force: true });
rmSync(join(root, "build"), { recursive: true, force: true });

run(["-p", "tsconfig.json"]);

const cjsSrc = join(root, "build", "cjs-src");
cpSync(join(root, "src"), cjsSrc, { recursive: true });
writeFileSync(join(root, "build", "package.json"), '{ "type": "commonjs" }\n');
writeFileSync(
    join(root, "build", "tsconfig.json"),
    JSON.stringify({
        extends: "../tsconfig.json",
        compilerOptions: { rootDir: "cjs-src", outDir: "../dist/cjs" },
        include: ["cjs-src"],
    }),
);
run(["-p", join("build", "tsconfig.json")]);
mkdirSync(join(root, "dist", "cjs"), { recursive: true });
writeFileSync(join(root, "dist", "cjs", "package.json"), '{ "type": "commonjs" }\n');
rmSync(join(root, "build"), { recursive: true, force: true });
