// Browser tests of the services page (`/services`): the real binary (harness.mjs) gets spans
// with known rates, errors and latencies (traces.mjs), and headless Chromium checks the values
// the page shows: its three RED charts, the operations table and the link to a trace search.
// Run with `node --test` (see run.sh).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ARTIFACTS, assertStayedHome, post, startBrowser, startServer, waitFor } from "./harness.mjs";
import { HOSTILE, classTrace, hostileTrace, nowNs, redTraces } from "./traces.mjs";

let server;
let base;
let otlpUrl;
let browser;
let context;
let requests = [];
let pageErrors = [];
let hostileEnd;

before(async () => {
  server = await startServer("services-server.log");
  ({ base, otlpUrl } = server);
  // Service and operation names are attacker-controlled. The range the test shows them in
  // ends with the minute after they were sent (the server counts whole minutes).
  hostileEnd = minuteEndMs(nowNs()) + 60_000;
  await post(`${otlpUrl}/v1/traces`, hostileTrace().body);
  await post(`${otlpUrl}/v1/traces`, classTrace(HOSTILE.img, HOSTILE.script, "hostile-cart", "hostile-db", HOSTILE.rtl).body);
  ({ browser, context, requests, pageErrors } = await startBrowser());
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const newPage = () => context.newPage();

/** A rate as the dashboard shows it ("1.5/s", "3/min", "2/h"), in calls per second. */
function perSecond(text) {
  const m = /^([\d.]+)\/(s|min|h)$/.exec(text.trim());
  assert.ok(m, `a rate: ${JSON.stringify(text)}`);
  return Number(m[1]) / { s: 1, min: 60, h: 3600 }[m[2]];
}

/** A duration as the dashboard shows it ("20ms", "9.95ms", "1.2s"), in ms. */
function millis(text) {
  const m = /^([\d.]+) ?(ms|s)$/.exec(text.trim());
  assert.ok(m, `a duration: ${JSON.stringify(text)}`);
  return Number(m[1]) * (m[2] === "s" ? 1000 : 1);
}

/** Within the latency sketch's 1% relative error. */
function near(actual, expected, what) {
  assert.ok(Math.abs(actual - expected) <= 0.01 * expected, `${what}: ${actual}, want ${expected} ± 1%`);
}

/** Opaque pixels of a chart's canvas close to a colour (#rrggbb): how much of a series is drawn. */
function ink(chart, color) {
  return chart.evaluate((el, hexColor) => {
    const canvas = el.querySelector("canvas");
    const rgb = [1, 3, 5].map((i) => parseInt(hexColor.slice(i, i + 2), 16));
    const px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] > 200 && rgb.every((c, k) => Math.abs(px[i + k] - c) < 40)) n++;
    }
    return n;
  }, color);
}

/** The operations table: per row its cells' text, the exact values (tooltips) and the link. */
function operationsTable(page) {
  return page.$$eval("tr[data-testid=red-op]", (rows) =>
    rows.map((r) => ({
      operation: r.cells[0].textContent,
      href: r.cells[0].querySelector("a")?.getAttribute("href"),
      rate: r.cells[1].textContent,
      errors: r.cells[2].textContent,
      p95: r.cells[3].textContent,
      exact: [1, 2, 3].map((i) => parseFloat(r.cells[i].querySelector("[title]")?.title ?? "NaN")),
    })),
  );
}

/** The unix ms of the end of the minute holding `ns` (a bigint of ns). */
const minuteEndMs = (ns) => Number((ns / 60_000_000_000n + 1n) * 60_000n);

/**
 * The call rates of a service's server spans per operation at the latest point with calls
 * (10 minutes up to `endMs`, 1 minute windows: the server counts whole minutes).
 */
async function latestCalls(service, endMs) {
  const q = `service=${encodeURIComponent(service)}&groupByOperation=true&endTs=${endMs}&lookback=600000&step=60000&ratePer=60000`;
  const body = await (await fetch(`${base}/api/metrics/calls?${q}`)).json();
  return Object.fromEntries(body.metrics.map((m) => [m.labels.find((l) => l.name === "operation").value, m.metricPoints.at(-1)?.gaugeValue.doubleValue]));
}

test("the services page charts a service's RED metrics and lists its operations with their latest values", async () => {
  const service = "red-shop";
  const minute = 60_000_000_000n;
  // All spans in the last whole minute, so in one of the server's rollup minutes: 60 GET /cart
  // at 10 ms, 30 POST /pay at 20 ms (6 with error status), 40 CLIENT GET inventory at 5 ms.
  const loadMinute = (nowNs() / minute - 1n) * minute;
  await post(`${otlpUrl}/v1/traces`, redTraces(service, loadMinute));
  // The range ends with that minute (end= in the address), so its values do not depend on
  // when the test runs.
  const end = minuteEndMs(loadMinute);
  await waitFor(async () => {
    const calls = await latestCalls(service, end);
    return calls["GET /cart"] === 1 && calls["POST /pay"] === 0.5;
  }, "the RED metrics of the load");

  const page = await newPage();
  await page.goto(`${base}/services?service=${service}&end=${end}`);
  await page.waitForSelector("tr[data-testid=red-op]");
  assert.equal(await page.getAttribute("#topbar a.active", "href"), "/services");
  assert.equal(await page.inputValue("[data-testid=services-service]"), service);
  assert.equal(await page.inputValue("[data-testid=services-lookback]"), "1h");
  assert.equal(await page.inputValue("[data-testid=services-kind]"), "server");
  assert.match(await page.textContent("[data-testid=services-window]"), /^Points every 1 min over the last hour, each computed over the 1 min before it from server spans/);

  // Three charts, each drawn on a canvas with points; the latest values are the load's.
  const charts = page.locator("[data-testid=red-chart]");
  assert.deepEqual(await charts.evaluateAll((cs) => cs.map((c) => c.dataset.metric)), ["calls", "errors", "latency"]);
  const chart = (metric) => page.locator(`[data-testid=red-chart][data-metric=${metric}]`);
  for (const metric of ["calls", "errors", "latency"]) {
    assert.ok((await chart(metric).locator("canvas").count()) > 0, `${metric} chart drawn`);
    const points = (await chart(metric).getAttribute("data-points")).split(",").map(Number);
    assert.equal(points.length, metric === "latency" ? 3 : 1);
    assert.ok(points.every((n) => n >= 1), `${metric} series have points: ${points}`);
  }
  await page.screenshot({ path: path.join(ARTIFACTS, "services.png"), fullPage: true });
  // p95 equals p99 here (both 20 ms), so its line lies under the p99 line.
  for (const [metric, color] of [["calls", "#2f6fdb"], ["errors", "#d1383d"], ["latency", "#59a14f"], ["latency", "#b07aa1"]]) {
    assert.ok((await ink(chart(metric), color)) > 10, `${metric} series ${color} drawn`);
  }
  const latestOf = async (metric) => (await chart(metric).locator("[data-testid=red-summary]").textContent()).replace(/^Latest \(\d\d:\d\d\): /, "");
  // The service's 90 server calls in one minute: 1.5 calls/s, 6 errors of 90, p50 10 ms, p95 and p99 20 ms.
  assert.equal(perSecond(await latestOf("calls")), 1.5);
  assert.equal(await latestOf("errors"), "6.7%");
  const latency = Object.fromEntries((await latestOf("latency")).split(" · ").map((s) => s.split(" ")));
  assert.deepEqual(Object.keys(latency), ["p50", "p95", "p99"]);
  near(millis(latency.p50), 10, "service p50");
  near(millis(latency.p95), 20, "service p95");
  near(millis(latency.p99), 20, "service p99");

  // The operations table: the server operations by rate, with their latest values.
  const rows = await operationsTable(page);
  assert.deepEqual(rows.map((r) => r.operation), ["GET /cart", "POST /pay"]);
  const [cart, pay] = rows;
  assert.equal(perSecond(cart.rate), 1);
  assert.equal(perSecond(pay.rate), 0.5);
  assert.equal(cart.exact[0] / pay.exact[0], 2, "GET /cart twice the rate of POST /pay");
  assert.equal(cart.errors, "0%");
  assert.equal(pay.errors, "20%");
  assert.equal(pay.exact[1], 20);
  near(millis(pay.p95), 20, "POST /pay p95 shown");
  near(pay.exact[2], 20, "POST /pay p95");
  near(cart.exact[2], 10, "GET /cart p95");
  assert.equal(cart.href, "/search?service=red-shop&operation=GET+%2Fcart&lookback=1h");

  // A click on an operation searches its traces.
  await page.locator("tr[data-testid=red-op] a", { hasText: "POST /pay" }).click();
  await page.waitForURL(/\/search\?service=red-shop&operation=POST\+%2Fpay&lookback=1h$/);
  await page.waitForSelector("[data-testid=result]");
  assert.equal(await page.inputValue("[data-testid=service]"), service);
  assert.equal(await page.inputValue("[data-testid=operation]"), "POST /pay");
  const titles = await page.$$eval("[data-testid=result] .title", (ts) => ts.map((t) => t.textContent));
  assert.ok(titles.length >= 1 && titles.every((t) => t === "red-shop: POST /pay"), titles.join("|"));

  // A longer range: 3-minute steps and windows; the rates keep their ratio.
  await page.goBack();
  await page.waitForSelector("tr[data-testid=red-op]");
  await page.selectOption("[data-testid=services-lookback]", "6h");
  await page.waitForFunction(() => /^Points every 3 min over the last 6 hours, each computed over the 3 min before it/.test(document.querySelector("[data-testid=services-window]")?.textContent ?? ""));
  assert.match(page.url(), new RegExp(`/services\\?service=red-shop&lookback=6h&end=${end}$`));
  const six = await operationsTable(page);
  assert.deepEqual(six.map((r) => r.operation), ["GET /cart", "POST /pay"]);
  // The tooltips have six significant digits.
  assert.ok(Math.abs(six[0].exact[0] - 60 / 180) < 1e-6 && Math.abs(six[1].exact[0] - 30 / 180) < 1e-6, JSON.stringify(six));

  // Another span kind counts other spans; a kind without spans says so.
  await page.selectOption("[data-testid=services-kind]", "client");
  await page.waitForFunction(() => [...document.querySelectorAll("tr[data-testid=red-op] a")].map((a) => a.textContent).join("|") === "GET inventory");
  assert.match(page.url(), /spanKind=client/);
  const [inventory] = await operationsTable(page);
  assert.equal(inventory.errors, "0%");
  near(inventory.exact[2], 5, "GET inventory p95");
  await page.selectOption("[data-testid=services-kind]", "producer");
  await page.waitForSelector("[data-testid=services-empty]");
  assert.equal(await page.textContent("[data-testid=services-empty]"), "No calls in this range: red-shop has no producer spans in the last 6 hours. Try a longer range or another span kind.");
  assert.equal(await page.locator("[data-testid=red-chart]").count(), 0);
  await page.close();
});

test("hostile service and operation names on the services page stay text", async () => {
  await waitFor(async () => Object.keys(await latestCalls("hostile-svc", hostileEnd)).length === 2, "the hostile service's metrics");
  await waitFor(async () => Object.keys(await latestCalls(HOSTILE.img, hostileEnd)).length === 1, "the hostile-named service's metrics");
  const page = await newPage();
  await page.goto(`${base}/services?service=hostile-svc&end=${hostileEnd}`);
  await page.waitForSelector("tr[data-testid=red-op]");
  const ops = (await operationsTable(page)).map((r) => r.operation).sort();
  assert.deepEqual(ops, [HOSTILE.script, `GET ${HOSTILE.img}`].sort());
  const errors = (await operationsTable(page)).find((r) => r.operation === `GET ${HOSTILE.img}`).errors;
  assert.equal(errors, "100%");
  const options = await page.$$eval("[data-testid=services-service] option", (os) => os.map((o) => o.textContent));
  assert.ok(options.includes(HOSTILE.img), "service name shown literally in the picker");
  await page.selectOption("[data-testid=services-service]", HOSTILE.img);
  await page.waitForFunction(() => document.querySelector("tr[data-testid=red-op] a")?.textContent === "POST /checkout");
  assert.equal(new URL(page.url()).searchParams.get("service"), HOSTILE.img);
  assert.equal(await page.locator("img[src=x], .services-page script").count(), 0);
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await page.close();
});

test("the services page requested nothing from another host and raised no page error", () => {
  assertStayedHome(base, requests, pageErrors);
});
