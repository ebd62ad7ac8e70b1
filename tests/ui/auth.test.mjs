// Browser tests of the dashboard against a server that requires bearer tokens ([[auth.tokens]]
// in a config file, harness.mjs): the token prompt, a wrong token refused, the right one
// stored and sent with every request (reload included, raw JSON too), a 403 shown where it
// happened, and "Forget token". Run with `node --test` (see run.sh).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ARTIFACTS, assertStayedHome, findOneTrace, openTraceAndRawJson, post, startBrowser, startServer, waitFor } from "./harness.mjs";
import { hex, nowNs, otlp, span } from "./traces.mjs";

const TOKENS = {
  reader: "ui-test-reader-token-0001",
  ingest: "ui-test-ingest-token-0001",
  admin: "ui-test-admin-token-00001",
};
const CONFIG = `
[[auth.tokens]]
name = "ui-reader"
token = "${TOKENS.reader}"
scopes = ["read"]

[[auth.tokens]]
name = "ui-ingest"
token = "${TOKENS.ingest}"
scopes = ["ingest"]

[[auth.tokens]]
name = "ui-admin"
token = "${TOKENS.admin}"
scopes = ["admin"]
`;
const SERVICE = "auth-shop";
const OPERATION = "GET /signed-in";
const bearer = (token) => ({ Authorization: `Bearer ${token}` });

let server;
let base;
let browser;
let context;
let requests = [];
let pageErrors = [];
let traceId;

before(async () => {
  server = await startServer("auth-server.log", { config: CONFIG });
  ({ base } = server);
  traceId = hex(16);
  const start = nowNs() - 30_000_000_000n;
  const body = otlp(SERVICE, [span(traceId, hex(8), null, OPERATION, start, 12_000_000n)]);
  await post(`${server.otlpUrl}/v1/traces`, body, bearer(TOKENS.ingest));
  await waitFor(async () => {
    const res = await fetch(`${base}/api/traces?service=${SERVICE}&lookback=1h`, { headers: bearer(TOKENS.reader) });
    return res.ok && (await res.json()).data.some((t) => t.traceID === traceId);
  }, "the trace to be queryable with the read token");
  ({ browser, context, requests, pageErrors } = await startBrowser());
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A new page that records the Authorization header of every API request it sends. */
async function newPage() {
  const page = await context.newPage();
  const sent = [];
  page.on("request", (r) => {
    if (new URL(r.url()).pathname.startsWith("/api/")) sent.push({ path: new URL(r.url()).pathname, auth: r.headers().authorization ?? null });
  });
  return { page, sent };
}

const prompt = (page) => page.getByRole("region", { name: "Access token required" });
const tokenInput = (page) => page.getByLabel("Access token", { exact: true });
const forgetButton = (page) => page.getByRole("button", { name: "Forget token" });
const storedToken = (page) => page.evaluate(() => localStorage.getItem("meshtrace.token"));

async function signIn(page, token) {
  await tokenInput(page).fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

test("the server refuses API requests without a token but serves the dashboard", async () => {
  const res = await fetch(`${base}/api/services`);
  assert.equal(res.status, 401);
  assert.match(res.headers.get("www-authenticate"), /^Bearer realm="meshtrace"/);
  assert.match((await res.json()).error, /missing bearer token/);
  assert.equal((await fetch(`${base}/search`)).status, 200);
});

test("the dashboard asks for a token, refuses a wrong one, shows data with the right one and forgets it", async () => {
  const { page, sent } = await newPage();
  await page.goto(`${base}/search`);

  // The prompt replaces the page, with the server's reason and the token field focused.
  await prompt(page).waitFor();
  assert.equal(await tokenInput(page).getAttribute("type"), "password");
  assert.ok(await tokenInput(page).evaluate((el) => el === document.activeElement), "the token field has the focus");
  assert.match(await page.getByRole("alert").textContent(), /missing bearer token/);
  assert.equal(await forgetButton(page).isVisible(), false);
  await page.screenshot({ path: path.join(ARTIFACTS, "auth-prompt.png") });

  // A wrong token: the server's message, still asking, nothing stored.
  await signIn(page, "not-a-real-token-0000");
  await page.getByRole("alert").filter({ hasText: "unknown bearer token" }).waitFor();
  assert.equal(await tokenInput(page).getAttribute("aria-invalid"), "true");
  assert.ok(await prompt(page).isVisible());
  assert.equal(await storedToken(page), null);
  await page.screenshot({ path: path.join(ARTIFACTS, "auth-wrong-token.png") });

  // The read token: the search page comes back with the service the test sent.
  const before = sent.length;
  await signIn(page, TOKENS.reader);
  await page.waitForSelector(`[data-testid=service] option[value="${SERVICE}"]`, { state: "attached" });
  assert.equal(await prompt(page).count(), 0);
  assert.equal(await storedToken(page), TOKENS.reader);
  assert.ok(await forgetButton(page).isVisible(), "Forget token is offered once a token is stored");
  const result = await findOneTrace(page, SERVICE, OPERATION);

  // A reload stays signed in.
  await page.reload();
  await result.waitFor();
  assert.equal(await prompt(page).count(), 0);
  assert.ok(await forgetButton(page).isVisible());
  await page.screenshot({ path: path.join(ARTIFACTS, "auth-signed-in.png") });

  // The trace and its raw JSON (a link cannot carry the token: fetched with it instead).
  const json = await openTraceAndRawJson(context, page, result, traceId, OPERATION);
  assert.equal(json.data[0].traceID, traceId);

  // Every API request after signing in carried the token.
  const after = sent.slice(before);
  assert.ok(after.length >= 5, `API requests after signing in: ${after.length}`);
  assert.deepEqual(after.filter((r) => r.auth !== `Bearer ${TOKENS.reader}`), []);

  // Forgetting the token asks again, also after a reload.
  await forgetButton(page).click();
  await prompt(page).waitFor();
  assert.equal(await storedToken(page), null);
  assert.equal(await forgetButton(page).isVisible(), false);
  assert.ok(await page.locator("[data-testid=span-row]").count() === 0, "the trace is no longer shown");
  await page.reload();
  await prompt(page).waitFor();
  await page.close();
});

test("a token without the admin scope sees the server's 403 where it saved, without being asked again", async () => {
  const { page } = await newPage();
  await page.goto(`${base}/priorities`);
  await prompt(page).waitFor();
  await signIn(page, TOKENS.reader);
  await page.getByRole("heading", { name: "Priorities", exact: true }).waitFor();
  await page.fill("[data-testid=override-class]", "gold");
  await page.fill("[data-testid=override-level]", "0");
  await page.click("[data-testid=override-set]");
  await page.waitForFunction(() => document.querySelector("[data-testid=override-status]")?.classList.contains("error"));
  assert.equal(await page.textContent("[data-testid=override-status]"), 'token "ui-reader" lacks scope admin');
  assert.equal(await prompt(page).count(), 0);
  assert.equal(await storedToken(page), TOKENS.reader);

  // The admin token may change overrides (PUT with the token and a JSON body).
  await forgetButton(page).click();
  await signIn(page, TOKENS.admin);
  await page.getByRole("heading", { name: "Priorities", exact: true }).waitFor();
  await page.fill("[data-testid=override-class]", "gold");
  await page.fill("[data-testid=override-level]", "0");
  await page.click("[data-testid=override-set]");
  await page.locator("tr[data-testid=override-row]", { hasText: "gold" }).waitFor();
  assert.match(await page.textContent("[data-testid=override-status]"), /Saved 1 override/);
  const stored = await fetch(`${base}/api/v1/priorities/overrides`, { headers: bearer(TOKENS.reader) });
  assert.deepEqual(await stored.json(), { gold: 0 });
  await page.close();
});

test("a stored token the server no longer knows is dropped and the prompt says so", async () => {
  const { page } = await newPage();
  await page.goto(`${base}/services`);
  await page.evaluate(() => localStorage.setItem("meshtrace.token", "revoked-token-00000000"));
  await page.reload();
  await prompt(page).waitFor();
  assert.match(await page.getByRole("alert").textContent(), /stored token was refused: unknown bearer token/);
  assert.equal(await storedToken(page), null);
  assert.equal(await forgetButton(page).isVisible(), false);
  await signIn(page, TOKENS.reader);
  await page.waitForSelector(`[data-testid=services-service] option[value="${SERVICE}"]`, { state: "attached" });
  assert.equal(new URL(page.url()).pathname, "/services");
  await page.close();
});

test("no request leaves the host and no page error occurred", () => {
  assertStayedHome(base, requests, pageErrors);
});
