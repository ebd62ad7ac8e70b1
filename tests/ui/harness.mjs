// What every browser test file shares: the real meshtrace binary started on free ports with a
// temp data dir, Debian's Chromium driven through playwright-core (every request and page
// error recorded), and small helpers (waiting, posting spans).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
export const ARTIFACTS = path.join(HERE, "artifacts");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

function binary() {
  if (process.env.MESHTRACE_BIN) return process.env.MESHTRACE_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(REPO, "target");
  return path.join(target, "debug", "meshtrace");
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(fn, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
}

/** Searches `service` on the search page and waits for exactly one result of `operation`. */
export async function findOneTrace(page, service, operation) {
  await page.selectOption("[data-testid=service]", service);
  await page.click("[data-testid=find]");
  const result = page.locator("[data-testid=result]", { hasText: operation });
  await result.waitFor();
  assert.equal(await page.locator("[data-testid=result]").count(), 1);
  return result;
}

/** Opens trace `traceId` from its search result and returns the JSON its raw-JSON link shows. */
export async function openTraceAndRawJson(context, page, result, traceId, operation) {
  await result.click();
  await page.waitForURL(new RegExp(`/trace/${traceId}$`));
  await page.locator("[data-testid=span-row]", { hasText: operation }).waitFor();
  const [raw] = await Promise.all([context.waitForEvent("page"), page.click("[data-testid=raw-json]")]);
  await raw.waitForLoadState();
  const json = JSON.parse(await raw.textContent("body"));
  await raw.close();
  return json;
}

export async function post(url, body, headers = {}) {
  const res = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", ...headers }, body: JSON.stringify(body) });
  const text = await res.text();
  assert.ok(res.ok, `POST ${url} -> ${res.status} ${text}`);
  return text;
}

/**
 * Starts the server (its log in artifacts/`logName`) and waits until it is ready; `stop()` ends
 * it and removes its data. `config`: the text of a TOML config file to start it with.
 */
export async function startServer(logName, { config } = {}) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  assert.ok(fs.existsSync(binary()), `meshtrace binary not found at ${binary()} (set MESHTRACE_BIN)`);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "meshtrace-ui-"));
  const [http, grpc, otlpHttp, zipkin] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const log = fs.openSync(path.join(ARTIFACTS, logName), "w");
  const configDir = config === undefined ? null : fs.mkdtempSync(path.join(os.tmpdir(), "meshtrace-ui-config-"));
  const configArgs = configDir ? ["--config", path.join(configDir, "meshtrace.toml")] : [];
  if (configDir) fs.writeFileSync(configArgs[1], config, { mode: 0o600 });
  const child = spawn(
    binary(),
    [
      "serve",
      ...configArgs,
      "--data-dir", dataDir,
      "--http-listen", `127.0.0.1:${http}`,
      "--otlp-grpc-listen", `127.0.0.1:${grpc}`,
      "--otlp-http-listen", `127.0.0.1:${otlpHttp}`,
      "--zipkin-listen", `127.0.0.1:${zipkin}`,
      "--flush-age", "1s",
      "--max-attribute-value-bytes", "200000",
      "--provenance-idle", "1s",
      "--budget-step", "1s",
    ],
    { stdio: ["ignore", log, log], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" } },
  );
  const base = `http://127.0.0.1:${http}`;
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      await Promise.race([new Promise((r) => child.once("exit", r)), sleep(10_000)]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
    if (configDir) fs.rmSync(configDir, { recursive: true, force: true });
  };
  try {
    await waitFor(async () => (await fetch(`${base}/readyz`)).ok, "server readiness");
  } catch (e) {
    await stop();
    throw e;
  }
  return { base, otlpUrl: `http://127.0.0.1:${otlpHttp}`, zipkinUrl: `http://127.0.0.1:${zipkin}`, stop };
}

/** Headless Chromium with one context; `requests` and `pageErrors` fill as pages run. */
export async function startBrowser() {
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM}`);
  const requests = [];
  const pageErrors = [];
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  context.on("request", (r) => requests.push(r.url()));
  context.on("page", (p) => {
    p.on("pageerror", (e) => pageErrors.push(String(e)));
    p.on("dialog", (d) => {
      pageErrors.push(`unexpected dialog: ${d.message()}`);
      void d.dismiss();
    });
  });
  return { browser, context, requests, pageErrors };
}

/** Checks that no page requested another host and no page error occurred. */
export function assertStayedHome(base, requests, pageErrors) {
  assert.ok(requests.length > 10, `requests were recorded (${requests.length})`);
  const outside = requests.filter((u) => !u.startsWith(base + "/") && !u.startsWith("data:") && !u.startsWith("blob:"));
  assert.deepEqual(outside, []);
  assert.deepEqual(pageErrors, []);
}
