// Browser tests of the dashboard's tenant field: spans sent for tenant "acme" (X-Scope-OrgID)
// and for the default tenant; the dashboard shows the default tenant's data until "acme" is
// entered in the top bar, then acme's only (every API request carrying the header, a reload and
// the raw JSON too), refuses a malformed tenant, and an empty field goes back to the default.
// Run with `node --test` (see run.sh).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ARTIFACTS, assertStayedHome, findOneTrace, openTraceAndRawJson, post, startBrowser, startServer, waitFor } from "./harness.mjs";
import { hex, nowNs, otlp, span } from "./traces.mjs";

const TENANT = "acme";
const ACME_SERVICE = "acme-shop";
const PLAIN_SERVICE = "plain-shop";
const OPERATION = "GET /tenant-cart";

let server;
let base;
let browser;
let context;
let requests = [];
let pageErrors = [];
let acmeTrace;

/** Whether `tenant` (null: the default) lists `service`. */
async function lists(tenant, service) {
  const headers = tenant ? { "X-Scope-OrgID": tenant } : {};
  const res = await fetch(`${base}/api/traces?service=${service}&lookback=1h`, { headers });
  return res.ok && ((await res.json()).data ?? []).length > 0;
}

before(async () => {
  server = await startServer("tenants-server.log");
  ({ base } = server);
  acmeTrace = hex(16);
  const start = nowNs() - 30_000_000_000n;
  const acme = otlp(ACME_SERVICE, [span(acmeTrace, hex(8), null, OPERATION, start, 12_000_000n)]);
  await post(`${server.otlpUrl}/v1/traces`, acme, { "X-Scope-OrgID": TENANT });
  const plain = otlp(PLAIN_SERVICE, [span(hex(16), hex(8), null, OPERATION, start, 9_000_000n)]);
  await post(`${server.otlpUrl}/v1/traces`, plain);
  await waitFor(() => lists(TENANT, ACME_SERVICE), "acme's trace in acme's search");
  await waitFor(() => lists(null, PLAIN_SERVICE), "the default tenant's trace");
  ({ browser, context, requests, pageErrors } = await startBrowser());
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const serviceOptions = (page) => page.$$eval("[data-testid=service] option", (os) => os.map((o) => o.value).filter(Boolean));
const tenantInput = (page) => page.getByTestId("tenant-input");

test("the tenant field switches every page to that tenant's data only", async () => {
  const page = await context.newPage();
  const sent = [];
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.pathname.startsWith("/api/")) sent.push({ path: url.pathname, tenant: r.headers()["x-scope-orgid"] ?? null });
  });
  await page.goto(`${base}/search`);
  await page.waitForSelector(`[data-testid=service] option[value="${PLAIN_SERVICE}"]`, { state: "attached" });
  assert.deepEqual(await serviceOptions(page), [PLAIN_SERVICE]);

  // A malformed tenant is refused in the field and not stored.
  await tenantInput(page).fill("../etc");
  await tenantInput(page).press("Enter");
  assert.equal(await tenantInput(page).evaluate((el) => el.validity.valid), false);
  assert.equal(await page.evaluate(() => localStorage.getItem("meshtrace.tenant")), null);

  const before = sent.length;
  await tenantInput(page).fill(TENANT);
  await tenantInput(page).press("Enter");
  await page.waitForSelector(`[data-testid=service] option[value="${ACME_SERVICE}"]`, { state: "attached" });
  assert.deepEqual(await serviceOptions(page), [ACME_SERVICE]);
  const result = await findOneTrace(page, ACME_SERVICE, OPERATION);

  // A reload keeps the tenant; the trace and its raw JSON are acme's.
  await page.reload();
  assert.equal(await tenantInput(page).inputValue(), TENANT);
  await result.waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, "tenant-acme.png") });
  const json = await openTraceAndRawJson(context, page, result, acmeTrace, OPERATION);
  assert.equal(json.data[0].traceID, acmeTrace);

  // The service graph page shows acme's service, not the default tenant's.
  await page.goto(`${base}/services`);
  await page.waitForSelector(`[data-testid=services-service] option[value="${ACME_SERVICE}"]`, { state: "attached" });
  const services = await page.$$eval("[data-testid=services-service] option", (os) => os.map((o) => o.value).filter(Boolean));
  assert.ok(!services.includes(PLAIN_SERVICE), `acme's services page lists ${services}`);

  const after = sent.slice(before);
  assert.ok(after.length >= 5, `API requests with the tenant: ${after.length}`);
  assert.deepEqual(after.filter((r) => r.tenant !== TENANT), []);

  // An empty field goes back to the default tenant.
  await page.goto(`${base}/search`);
  await tenantInput(page).fill("");
  await tenantInput(page).press("Enter");
  await page.waitForSelector(`[data-testid=service] option[value="${PLAIN_SERVICE}"]`, { state: "attached" });
  assert.deepEqual(await serviceOptions(page), [PLAIN_SERVICE]);
  assert.equal(await page.evaluate(() => localStorage.getItem("meshtrace.tenant")), null);
  assertStayedHome(base, requests, pageErrors);
  await page.close();
});
