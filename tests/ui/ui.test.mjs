// Browser tests of the meshtrace dashboard: starts the real binary on free ports with a temp
// data dir, loads fixture traces (timestamps shifted to now) plus generated ones, and drives
// Debian's Chromium through playwright-core (harness.mjs; test data in traces.mjs). Run with
// `node --test` (see run.sh); the services page has its own file, services.test.mjs.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ARTIFACTS, assertStayedHome, post, startBrowser, startServer, waitFor } from "./harness.mjs";
import { HOSTILE, bigTrace, classTrace, hex, hostileTrace, liveTrace, nowNs, otlp, sharedTrace, shiftedExampleTrace, shiftedZipkin, span } from "./traces.mjs";

let server;
let base;
let otlpUrl;
let zipkinUrl;
let browser;
let context;
let requests = [];
let pageErrors = [];
const ids = {};

/** Fetches the service graph API; `ok` decides when it is what the caller waits for. */
async function graphApi(klass, ok = () => true) {
  const res = await fetch(`${base}/api/v1/graph?${klass ? `class=${encodeURIComponent(klass)}` : ""}`);
  if (!res.ok) return null;
  const g = await res.json();
  return ok(g) ? g : null;
}

const hasNodes = (...names) => (g) => names.every((n) => g.nodes.some((x) => x.id === n));

async function found(service, traceId) {
  const res = await fetch(`${base}/api/traces?service=${encodeURIComponent(service)}&lookback=6h&limit=100`);
  if (!res.ok) return false;
  const body = await res.json();
  return (body.data ?? []).some((t) => !traceId || t.traceID === traceId);
}

async function loadData() {
  await post(`${otlpUrl}/v1/traces`, shiftedExampleTrace());
  await post(`${zipkinUrl}/api/v2/spans`, shiftedZipkin("yelp.json", 120));
  await post(`${zipkinUrl}/api/v2/spans`, shiftedZipkin("smartthings-mobile-web-install.json", 240));
  const hostile = hostileTrace();
  await post(`${otlpUrl}/v1/traces`, hostile.body);
  ids.hostile = hostile.traceId;
  ids.hostileRoot = hostile.root;
  const big = bigTrace(5000);
  await post(`${otlpUrl}/v1/traces`, big.body);
  Object.assign(ids, { big: big.traceId, bigFirst: big.first, bigLast: big.last });
  const live = liveTrace();
  await post(`${otlpUrl}/v1/traces`, live.body);
  await post(`${otlpUrl}/v1/traces`, classTrace("shop-frontend", "checkout").body);
  // Graph labels and class names are attacker-controlled too.
  await post(`${otlpUrl}/v1/traces`, classTrace(HOSTILE.img, HOSTILE.script, "hostile-cart", "hostile-db", HOSTILE.rtl).body);
  for (const [svc, id] of [["example-service-1", null], ["yelp-main", null], ["hostile-svc", ids.hostile], ["big-svc", ids.big], ["live-svc", live.traceId]]) {
    await waitFor(() => found(svc, id), `${svc} to be queryable`);
  }
}

before(async () => {
  server = await startServer("server.log");
  ({ base, otlpUrl, zipkinUrl } = server);
  await loadData();
  ({ browser, context, requests, pageErrors } = await startBrowser());
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function newPage() {
  return context.newPage();
}

async function search(page, service, tags = "") {
  await page.goto(`${base}/search`);
  await page.waitForSelector(`[data-testid=service] option[value="${service}"]`, { state: "attached" });
  await page.selectOption("[data-testid=service]", service);
  if (tags) await page.fill("[data-testid=tags]", tags);
  await page.click("[data-testid=find]");
  await page.waitForFunction(() => /^\d+ traces?/.test(document.querySelector(".status")?.textContent ?? ""));
}

test("the binary serves the dashboard with content types and SPA fallback", async () => {
  for (const p of ["/", "/search", `/trace/${ids.hostile}`]) {
    const res = await fetch(base + p);
    assert.equal(res.status, 200, p);
    assert.match(res.headers.get("content-type"), /^text\/html/);
    assert.match(res.headers.get("content-security-policy"), /default-src 'self'/);
    const html = await res.text();
    assert.match(html, /<title>meshtrace<\/title>/);
    assert.doesNotMatch(html, /meshtrace-ui-placeholder/, "the dashboard was not built into the binary");
  }
  const html = await (await fetch(base + "/")).text();
  const js = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
  const css = /href="(\/assets\/[^"]+\.css)"/.exec(html)?.[1];
  assert.ok(js && css, "index.html references built assets");
  assert.match((await fetch(base + js)).headers.get("content-type"), /^text\/javascript/);
  assert.match((await fetch(base + css)).headers.get("content-type"), /^text\/css/);
  assert.equal((await fetch(base + "/api/nonexistent")).status, 404);
  assert.equal((await fetch(base + "/assets/nope-123.js")).status, 404);
});

test("search by service lists traces with a scatter plot, and a result opens its waterfall", async () => {
  const page = await newPage();
  await search(page, "yelp-main");
  const rows = page.locator("[data-testid=result]");
  assert.ok((await rows.count()) >= 1, "at least one result");
  assert.match(page.url(), /service=yelp-main/);
  const first = rows.first();
  assert.match(await first.textContent(), /spans|routing|yelp/i);
  assert.equal(await page.locator("[data-testid=scatter] canvas").count() > 0, true, "scatter plot drawn");
  await page.screenshot({ path: path.join(ARTIFACTS, "search.png"), fullPage: true });

  await first.click();
  // yelp's trace ID is 64-bit: Jaeger prints it with 16 hex characters.
  await page.waitForURL(/\/trace\/[0-9a-f]{16}$/);
  await page.waitForSelector("[data-testid=span-row]");
  const spanRows = await page.locator("[data-testid=span-row]").count();
  assert.ok(spanRows >= 10, `yelp trace shows its spans (${spanRows})`);
  assert.match(await page.textContent("[data-testid=trace-title]"), /routing/);
  const raw = await page.getAttribute("[data-testid=raw-json]", "href");
  assert.match(raw, /^\/api\/traces\/[0-9a-f]{16}$/);
  // Span details on click: tags, process and references.
  await page.locator("[data-testid=span-row]").nth(1).click();
  const details = page.locator("[data-testid=span-details]");
  await details.waitFor();
  assert.match(await details.textContent(), /Tags \/ attributes/);
  assert.match(await details.textContent(), /CHILD_OF/);
  assert.ok((await page.locator("[data-testid=span-tags] tr").count()) >= 1);
  await page.screenshot({ path: path.join(ARTIFACTS, "trace.png") });
  // Collapsing the root hides its descendants; expanding shows them again.
  await page.locator("[data-testid=span-row]").first().locator(".wf-toggle").click();
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=span-row]").length === 1);
  await page.click("text=Expand all");
  await page.waitForFunction((n) => document.querySelectorAll("[data-testid=span-row]").length === n, spanRows);
  await page.close();
});

test("search by tag narrows the results and the URL reloads the same search", async () => {
  const page = await newPage();
  await search(page, "example-service-1");
  assert.ok((await page.locator("[data-testid=result]").count()) >= 1);
  await search(page, "yelp-main", "http.uri.client=/location/update/v4");
  assert.equal(await page.locator("[data-testid=result]").count(), 1);
  const url = page.url();
  assert.match(url, /tags=http\.uri\.client/);
  await search(page, "yelp-main", "http.uri.client=/no/such/path");
  assert.equal(await page.locator("[data-testid=result]").count(), 0);
  assert.match(await page.textContent("[data-testid=results]"), /No traces found/);
  // Reloading a shared URL runs the same search and fills the form.
  await page.goto(url);
  await page.waitForSelector("[data-testid=result]");
  assert.equal(await page.locator("[data-testid=result]").count(), 1);
  assert.equal(await page.inputValue("[data-testid=tags]"), "http.uri.client=/location/update/v4");
  assert.equal(await page.inputValue("[data-testid=service]"), "yelp-main");
  // Duration bounds and a custom time range come from the URL too. Jaeger matches durations
  // per span: the longest yelp-main span lasts 56 ms.
  const nowUs = Date.now() * 1000;
  const count = async (query) => {
    await page.goto(`${base}/search?service=yelp-main&${query}`);
    await page.waitForFunction(() => /^\d+ traces?/.test(document.querySelector(".status")?.textContent ?? ""));
    return page.locator("[data-testid=result]").count();
  };
  assert.equal(await count("minDuration=50ms&maxDuration=1s"), 1);
  assert.equal(await count("minDuration=60ms"), 0);
  assert.equal(await count(`lookback=custom&start=${nowUs - 600e6}&end=${nowUs}`), 1);
  assert.equal(await page.inputValue("[data-testid=lookback]"), "custom");
  assert.equal(await count(`lookback=custom&start=${nowUs - 7200e6}&end=${nowUs - 3600e6}`), 0);
  await page.close();
});

test("search results show the class the server's rules assigned, not only span attributes", async () => {
  // A catalog rule classifies every trace entering at `ruled-svc`; its spans carry no class.
  const put = await fetch(`${base}/api/v1/classes`, {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify([{ class: "ruled-gold", service: "ruled-svc" }]),
  });
  assert.equal(put.status, 200, await put.text());
  const traceId = hex(16);
  const root = hex(8);
  const t0 = nowNs() - 5_000_000_000n;
  await post(`${otlpUrl}/v1/traces`, otlp("ruled-svc", [span(traceId, root, null, "GET /vip", t0, 12_000_000n), span(traceId, hex(8), root, "SELECT", t0 + 1_000_000n, 4_000_000n)]));
  await waitFor(() => found("ruled-svc", traceId), "ruled-svc to be queryable");
  const page = await newPage();
  await search(page, "ruled-svc");
  const row = page.locator(`[data-testid=result][data-trace-id="${traceId}"]`);
  await row.waitFor();
  assert.equal((await row.locator(".class").textContent()).trim(), "ruled-gold");
  assert.match(await page.textContent("[data-testid=results] .result.head"), /Class/);
  await page.close();
});

test("clicking a point of the scatter plot opens its trace", async () => {
  const page = await newPage();
  await page.goto(`${base}/search?service=big-svc&lookback=1h`);
  await page.waitForSelector("[data-testid=result]");
  const points = await page.waitForFunction(() => window.__meshtraceScatter?.().length && window.__meshtraceScatter());
  const [p] = await points.jsonValue();
  assert.equal(p.traceID, ids.big);
  await page.mouse.move(p.clientX, p.clientY);
  await page.mouse.click(p.clientX, p.clientY);
  await page.waitForURL(`**/trace/${ids.big}`);
  await page.close();
});

test("a 5000-span trace renders only the visible rows and scrolls to the end", async () => {
  const page = await newPage();
  const t0 = Date.now();
  await page.goto(`${base}/trace/${ids.big}`);
  await page.waitForSelector("[data-testid=span-row]");
  const loadMs = Date.now() - t0;
  const inDom = await page.locator("[data-testid=span-row]").count();
  assert.ok(inDom > 10 && inDom < 150, `virtualized rows in the DOM: ${inDom}`);
  assert.match(await page.textContent(".trace-stats"), /5000/);
  await page.screenshot({ path: path.join(ARTIFACTS, "big-trace.png") });
  const height = await page.$eval("[data-testid=waterfall] .wf-spacer", (el) => el.getBoundingClientRect().height);
  assert.equal(height, 5000 * 26);
  await page.$eval("[data-testid=waterfall]", (el) => (el.scrollTop = el.scrollHeight));
  // Depth-first order puts the last span of the deepest rightmost branch at the bottom.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("[data-testid=span-row]")];
    return rows.some((r) => parseInt(r.style.top, 10) === 4999 * 26);
  });
  assert.ok((await page.locator("[data-testid=span-row]").count()) < 150);
  assert.ok(loadMs < 15_000, `loaded in ${loadMs} ms`);
  await page.close();
});

test("hostile attribute values are shown as text and never run", async () => {
  const page = await newPage();
  await page.goto(`${base}/search?service=hostile-svc&lookback=1h`);
  await page.waitForSelector("[data-testid=result]");
  const resultText = await page.textContent("[data-testid=results]");
  assert.ok(resultText.includes(HOSTILE.img), "operation name shown literally in results");
  assert.ok(resultText.includes(HOSTILE.script), "request class shown literally");
  await page.screenshot({ path: path.join(ARTIFACTS, "hostile-search.png") });
  await page.click("[data-testid=result]");
  await page.waitForSelector("[data-testid=span-row]");
  await page.locator(`[data-span-id="${ids.hostileRoot}"]`).click();
  const details = page.locator("[data-testid=span-details]");
  await details.waitFor();
  const text = await details.textContent();
  assert.ok(text.includes(HOSTILE.script), "script tag shown as text");
  assert.ok(text.includes(HOSTILE.img), "img markup shown as text");
  assert.ok(text.includes("U+202E") && text.includes("U+200F") && text.includes("U+2067"), "bidi controls made visible");
  assert.equal(await page.locator("[data-testid=span-details] img, [data-testid=span-details] script").count(), 0);
  assert.equal(await page.locator("img[src=x]").count(), 0);
  assert.match(await page.textContent("[data-testid=span-status]"), /ERROR/);
  // The 100 kB value is previewed and can be expanded in full.
  const more = details.locator("button.more");
  assert.equal(await more.count(), 1);
  await more.click();
  const bigShown = await page.$$eval("[data-testid=span-tags] td", (tds) => Math.max(...tds.map((td) => td.textContent.length)));
  assert.ok(bigShown >= 100 * 1024, `full value shown (${bigShown} chars)`);
  await page.locator("[data-testid=span-row]").nth(1).click();
  await page.waitForFunction(() => document.querySelector("[data-testid=span-details]")?.textContent.includes("U+202E"));
  await page.locator(`[data-span-id="${ids.hostileRoot}"]`).click();
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await page.screenshot({ path: path.join(ARTIFACTS, "hostile.png") });
  await page.close();
});

test("the search page refreshes live without losing what the user typed", async () => {
  const page = await newPage();
  await page.goto(`${base}/search?service=live-svc&lookback=15m&live=1`);
  await page.waitForSelector("[data-testid=result]");
  assert.equal(await page.isChecked("[data-testid=live]"), true);
  const before = await page.locator("[data-testid=result]").count();
  await page.fill("[data-testid=tags]", "typed=but-not-submitted");
  const url = page.url();
  const extra = liveTrace();
  await post(`${otlpUrl}/v1/traces`, extra.body);
  await page.waitForSelector(`[data-trace-id="${extra.traceId}"]`, { timeout: 20_000 });
  assert.equal(await page.locator("[data-testid=result]").count(), before + 1);
  assert.equal(await page.inputValue("[data-testid=tags]"), "typed=but-not-submitted");
  assert.equal(page.url(), url);
  // Turning live off stops the refreshes and drops it from the URL.
  await page.uncheck("[data-testid=live]");
  assert.doesNotMatch(page.url(), /live=1/);
  await page.close();
});

test("critical path: highlighted when the provenance API answers, nothing on 404", async () => {
  const page = await newPage();
  const status = (await fetch(`${base}/api/v1/traces/${ids.hostile}/provenance`)).status;
  await page.goto(`${base}/trace/${ids.hostile}`);
  await page.waitForSelector("[data-testid=span-row]");
  await page.waitForTimeout(500);
  if (status === 404) {
    assert.equal(await page.locator("[data-testid=critical-badge]").count(), 0);
    assert.equal(await page.locator(".wf-crit").count(), 0);
  }
  // With an answering provenance API (mocked here), the critical path is drawn.
  const trace = (await (await fetch(`${base}/api/traces/${ids.hostile}`)).json()).data[0];
  const root = trace.spans.find((s) => s.spanID === ids.hostileRoot);
  await page.route("**/api/v1/traces/*/provenance", (route) =>
    route.fulfill({
      json: {
        class: "gold",
        critical_path: [
          { span_id: root.spanID, start_us: root.startTime, end_us: root.startTime + 5000 },
          { span_id: trace.spans.find((s) => s !== root).spanID, start_us: root.startTime + 5000, end_us: root.startTime + 25000 },
        ],
      },
    }),
  );
  await page.reload();
  await page.waitForSelector("[data-testid=critical-badge]");
  assert.match(await page.textContent("[data-testid=critical-badge]"), /2 spans/);
  assert.equal(await page.locator(".wf-row.critical").count(), 2);
  assert.ok((await page.locator(".wf-crit").count()) >= 2);
  await page.screenshot({ path: path.join(ARTIFACTS, "critical-path.png") });
  await page.close();
});

test("an unknown trace ID shows a not-found message", async () => {
  const page = await newPage();
  await page.goto(`${base}/trace/${"f".repeat(32)}`);
  await page.waitForSelector("text=Trace not found");
  await page.close();
});

/** Waits until the graph page has laid out a graph (of `klass` when given) that `ok` accepts. */
async function renderedGraph(page, klass = null, ok = () => true) {
  return waitFor(async () => {
    const g = await page.evaluate(() => window.__meshtraceGraph?.() ?? null);
    return g && g.rendered && g.nodes.length && (klass === null || g.class === klass) && ok(g) ? g : null;
  }, "the graph to be drawn", 25_000);
}

const YELP_NODES = ["user", "routing", "yelp-main", "mobile_api", "spectre", "memcache", "mysql", "coresrv", "bookie", "auth"];

test("the service graph lays out the loaded traces' services with Cytoscape", async () => {
  const api = await waitFor(() => graphApi(null, hasNodes(...YELP_NODES, "shop-frontend", "shop-cart", "orders-db")), "the provenance graph of the fixtures");
  const page = await newPage();
  await page.goto(`${base}/graph`);
  const g = await renderedGraph(page);
  assert.ok((await page.locator("[data-testid=graph] canvas").count()) > 0, "cytoscape drew on a canvas");
  const ids = new Set(g.nodes.map((n) => n.id));
  for (const n of YELP_NODES) assert.ok(ids.has(n), `node ${n} drawn`);
  assert.equal(g.nodes.length, api.nodes.length, "every node of the API is drawn");
  assert.equal(g.edges.length, api.edges.length, "every edge of the API is drawn");
  const edge = (a, b) => g.edges.find((e) => e.source === a && e.target === b);
  for (const [a, b] of [["user", "routing"], ["routing", "yelp-main"], ["yelp-main", "mobile_api"], ["yelp-main", "mysql"], ["mobile_api", "spectre"], ["shop-frontend", "orders-db"]]) {
    assert.ok(edge(a, b), `edge ${a} -> ${b}`);
    assert.match(edge(a, b).label, /^[\d.]+\/(s|min|h) · [\d.]+% err · p99 [\d.]+m?s$/);
  }
  const byId = Object.fromEntries(g.nodes.map((n) => [n.id, n]));
  assert.equal(byId.user.kind, "user");
  assert.equal(byId.mysql.virtual, true);
  assert.equal(byId["orders-db"].kind, "database");
  assert.equal(byId["yelp-main"].virtual, false);
  assert.equal(byId["yelp-main"].kind, "service");
  for (const n of api.nodes) assert.equal(byId[n.id].kind, n.kind, `node ${n.id} drawn as the kind the API names`);
  // The layout is layered (left to right, or top to bottom for a long chain): the user
  // first, then the entry service, then what it calls.
  const rank = (n) => (g.rankDir === "LR" ? byId[n].clientX : byId[n].clientY);
  assert.ok(rank("user") < rank("routing") && rank("routing") < rank("yelp-main") && rank("yelp-main") < rank("mobile_api"), `layered ${g.rankDir}`);
  assert.ok(rank("shop-frontend") < rank("shop-cart"));
  assert.deepEqual(
    [...new Set(g.nodes.map((n) => `${Math.round(n.clientX)},${Math.round(n.clientY)}`))].length,
    g.nodes.length,
    "no two nodes at the same place",
  );
  assert.match(await page.textContent(".status"), new RegExp(`^${api.nodes.length} nodes, ${api.edges.length} edges`));
  assert.equal(await page.getAttribute("#topbar a.active", "href"), "/graph");

  // Picking a class narrows the graph to that class's traces.
  const options = await page.$$eval("[data-testid=graph-class] option", (os) => os.map((o) => o.value));
  assert.ok(options.includes("") && options.includes("default") && options.includes("checkout"), options.join(","));
  await page.selectOption("[data-testid=graph-class]", "checkout");
  const checkout = await renderedGraph(page, "checkout");
  assert.deepEqual(checkout.nodes.map((n) => n.id).sort(), ["orders-db", "shop-cart", "shop-frontend", "user"]);
  assert.match(page.url(), /class=checkout/);
  await page.screenshot({ path: path.join(ARTIFACTS, "graph-checkout.png") });
  await page.selectOption("[data-testid=graph-class]", "default");
  const dflt = await renderedGraph(page, "default");
  const dIds = new Set(dflt.nodes.map((n) => n.id));
  for (const n of YELP_NODES) assert.ok(dIds.has(n), `default class has ${n}`);
  assert.ok(!dIds.has("shop-frontend"), "checkout services are not in the default class");
  await page.screenshot({ path: path.join(ARTIFACTS, "graph.png") });

  // Clicking a service shows its details with a link to search its traces.
  const ym = dflt.nodes.find((n) => n.id === "yelp-main");
  await page.mouse.click(ym.clientX, ym.clientY);
  await page.waitForSelector("[data-testid=graph-selected]");
  assert.equal(await page.textContent("[data-testid=graph-selected]"), "yelp-main");
  assert.match(await page.textContent("[data-testid=graph-details]"), /mobile_api/);
  await page.screenshot({ path: path.join(ARTIFACTS, "graph-selected.png") });
  await page.click("[data-testid=graph-search-link]");
  await page.waitForURL(/\/search\?service=yelp-main&lookback=1h$/);
  await page.waitForSelector("[data-testid=result]");
  // Double-clicking a service goes straight to its search.
  await page.goBack();
  const again = await renderedGraph(page, "default");
  const routing = again.nodes.find((n) => n.id === "routing");
  await page.mouse.dblclick(routing.clientX, routing.clientY);
  await page.waitForURL(/\/search\?service=routing/);
  await page.close();
});

test("the service graph refreshes live, keeping the selection and the viewport", async () => {
  await waitFor(() => graphApi("checkout", hasNodes("shop-frontend")), "the checkout graph");
  const page = await newPage();
  await page.goto(`${base}/graph?class=checkout&live=1`);
  const g = await renderedGraph(page, "checkout");
  assert.equal(await page.isChecked("[data-testid=graph-live]"), true);
  const cart = g.nodes.find((n) => n.id === "shop-cart");
  await page.mouse.click(cart.clientX, cart.clientY);
  await page.waitForSelector("[data-testid=graph-selected]");
  // The user zooms in and pans.
  await page.mouse.move(cart.clientX, cart.clientY);
  await page.mouse.wheel(0, -300);
  await page.waitForTimeout(300);
  const canvas = await page.locator("[data-testid=graph]").boundingBox();
  await page.mouse.move(canvas.x + 40, canvas.y + 40);
  await page.mouse.down();
  await page.mouse.move(canvas.x + 140, canvas.y + 90, { steps: 5 });
  await page.mouse.up();
  const before = await page.evaluate(() => window.__meshtraceGraph());
  assert.notEqual(before.zoom, g.zoom, "the wheel zoomed");
  assert.deepEqual(before.selected, ["shop-cart"]);
  // A trace of the class reaching a new service appears without a reload.
  await post(`${otlpUrl}/v1/traces`, classTrace("shop-frontend", "checkout", "shop-cart-v2").body);
  const after = await renderedGraph(page, "checkout", (x) => x.nodes.some((n) => n.id === "shop-cart-v2"));
  assert.deepEqual(after.selected, ["shop-cart"], "selection kept");
  assert.equal(after.zoom, before.zoom, "zoom kept");
  assert.deepEqual(after.pan, before.pan, "pan kept");
  assert.equal(await page.textContent("[data-testid=graph-selected]"), "shop-cart");
  assert.match(await page.textContent(".status"), /live, updated/);
  await page.uncheck("[data-testid=graph-live]");
  assert.doesNotMatch(page.url(), /live=1/);
  assert.match(page.url(), /class=checkout/);
  await page.close();
});

test("hostile service and class names in the graph stay text", async () => {
  await waitFor(() => graphApi(HOSTILE.script, hasNodes(HOSTILE.img)), "the hostile class graph");
  const page = await newPage();
  await page.goto(`${base}/graph`);
  await renderedGraph(page);
  const labels = await page.$$eval("[data-testid=graph-class] option", (os) => os.map((o) => o.textContent));
  assert.ok(labels.some((l) => l.includes(HOSTILE.script)), "class name shown literally");
  await page.selectOption("[data-testid=graph-class]", HOSTILE.script);
  const g = await renderedGraph(page, HOSTILE.script);
  const node = g.nodes.find((n) => n.id === HOSTILE.img);
  assert.ok(node.label.startsWith(HOSTILE.img), "label is the literal name");
  const peer = g.nodes.find((n) => n.id === HOSTILE.rtl);
  assert.ok(peer && peer.virtual && !/[\u202a-\u202e\u2066-\u2069\u200e\u200f]/.test(peer.label), "bidi controls stripped from the canvas label");
  await page.mouse.click(node.clientX, node.clientY);
  await page.waitForSelector("[data-testid=graph-selected]");
  assert.equal(await page.textContent("[data-testid=graph-selected]"), HOSTILE.img);
  assert.equal(await page.locator("img[src=x], [data-testid=graph-details] script").count(), 0);
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await page.screenshot({ path: path.join(ARTIFACTS, "graph-hostile.png") });
  await page.close();
});

test("the classes page lists rules, traces per class and the learned mapping; budgets only when the API answers", async () => {
  const put = await fetch(`${base}/api/v1/classes`, {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify([{ class: "gold", service: "no-such-service", route_prefix: "/vip" }]),
  });
  assert.equal(put.status, 200, await put.text());
  await waitFor(async () => (await (await fetch(`${base}/api/v1/classes/mapping`)).json()).some((m) => m.class === "default"), "a learned mapping");
  const budgetStatus = (await fetch(`${base}/api/v1/budgets`)).status;
  const page = await newPage();
  await page.goto(`${base}/graph`);
  await page.click("#topbar a[href='/classes']");
  await page.waitForURL(/\/classes$/);
  await page.waitForSelector("[data-testid=class-count]");
  const counts = await page.$$eval("[data-testid=class-count]", (rs) => rs.map((r) => r.textContent));
  assert.ok(counts.some((t) => t.startsWith("default")), counts.join("|"));
  assert.ok(counts.some((t) => t.startsWith("checkout")), counts.join("|"));
  const rule = await page.textContent("[data-testid=class-rule]");
  assert.match(rule, /gold/);
  assert.match(rule, /no-such-service/);
  assert.match(rule, /\/vip/);
  assert.match(rule, /catalog/);
  const mapping = await page.$$eval("[data-testid=mapping-row]", (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
  assert.ok(mapping.some(([caller, callee, , klass]) => caller === "routing" && callee === "yelp-main" && klass === "default"), "yelp call learned as default");
  assert.ok(mapping.some(([caller, callee, , klass, count, share]) => caller === "shop-frontend" && callee === "shop-cart" && klass === "checkout" && Number(count) >= 1 && share === "100%"));
  assert.equal(await page.getAttribute("[data-testid=class-count] a", "href").then((h) => h.startsWith("/graph?class=")), true);
  assert.equal(await page.getAttribute("#topbar a.active", "href"), "/classes");
  if (budgetStatus === 404) assert.equal(await page.locator("[data-testid=class-budgets] *").count(), 0, "nothing shown without the budgets API");
  await page.screenshot({ path: path.join(ARTIFACTS, "classes.png"), fullPage: true });
  if (budgetStatus === 200) {
    // The real budgets API: an objective for a class makes it listed, and the page shows it.
    const res = await fetch(`${base}/api/v1/classes/checkout/objective`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ quantile: 0.95, latency_ms: 250, importance: 5 }),
    });
    assert.equal(res.status, 200, await res.text());
    const listed = await waitFor(async () => {
      const body = await (await fetch(`${base}/api/v1/budgets`)).json();
      return (body.classes ?? body).find((b) => b.class === "checkout");
    }, "the checkout class in the budgets API");
    await page.reload();
    const real = page.locator("[data-testid=budget-card][data-class=checkout]");
    await real.waitFor();
    assert.match(await real.textContent(), /p95 ≤ 250ms/);
    assert.equal(await real.locator("tr[data-testid=budget-hop]").count(), listed.hops.length);
    assert.equal(await real.locator("tr.at-risk").count(), listed.hops.filter((h) => h.at_risk).length);
    await page.screenshot({ path: path.join(ARTIFACTS, "classes-real-budgets.png") });
  }

  // With an answering budgets API (mocked here), objectives and hops are shown, at-risk marked.
  await page.route("**/api/v1/budgets", (route) =>
    route.fulfill({
      json: {
        classes: [
        {
          class: "checkout",
          objective: { quantile: 0.99, latency_ms: 200, importance: 10 },
          observed_ms: 240.5,
          attainment: 0.93,
          samples: 120,
          hops: [
            { service: "shop-frontend", operation: "POST /checkout", parent: null, depth: 0, parallel: false, budget_ms: 80, subtree_budget_ms: 200, observed_ms: 60, slack_ms: 20, share: 0.3, rate_per_s: 2, load_share: 1, at_risk: false },
            { service: "shop-cart", operation: "GET /cart", parent: "shop-frontend POST /checkout", depth: 1, parallel: false, budget_ms: 120, subtree_budget_ms: 120, observed_ms: 180.5, slack_ms: -60.5, share: 0.7, rate_per_s: 2, load_share: 0.5, at_risk: true },
          ],
          missing: true,
        },
        ],
      },
    }),
  );
  await page.reload();
  const card = page.locator("[data-testid=budget-card][data-class=checkout]");
  await card.waitFor();
  const text = await card.textContent();
  assert.match(text, /p99 ≤ 200ms/);
  assert.match(text, /241ms/);
  assert.match(text, /93%/);
  assert.match(text, /objective missed/);
  assert.equal(await card.locator("tr.at-risk").count(), 1);
  assert.match(await card.locator("tr.at-risk").textContent(), /shop-cart.*-61ms.*at risk/);
  await page.screenshot({ path: path.join(ARTIFACTS, "classes-budgets.png"), fullPage: true });
  await page.close();
});

async function putJson(url, body) {
  const res = await fetch(url, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const text = await res.text();
  assert.equal(res.status, 200, `PUT ${url} -> ${res.status} ${text}`);
  return JSON.parse(text);
}

/** The newest version in a service's priority history. */
async function latestSet(service) {
  const body = await (await fetch(`${base}/api/v1/priorities/history?service=${encodeURIComponent(service)}`)).json();
  return body.versions.reduce((a, b) => (!a || b.version > a.version ? b : a), null);
}

test("the priorities page shows assignments, proxies, history and edits overrides; the classes page charts budgets", async () => {
  const [shared, gold, bronze] = ["prio-shared", "prio-gold", "prio-bronze"];
  await putJson(`${base}/api/v1/classes/${gold}/objective`, { quantile: 0.9, latency_ms: 100, importance: 5 });
  await putJson(`${base}/api/v1/classes/${bronze}/objective`, { quantile: 0.9, latency_ms: 5000, importance: 5 });
  for (let i = 0; i < 6; i++) {
    await post(`${otlpUrl}/v1/traces`, sharedTrace("prio-front-gold", shared, gold, 400));
    await post(`${otlpUrl}/v1/traces`, sharedTrace("prio-front-bronze", shared, bronze, 20));
  }
  // The gold class is slow at the shared service, so at risk there: it gets the higher level.
  const level = (set, klass) => set?.assignments?.find((a) => a.class === klass)?.priority;
  await waitFor(async () => {
    const set = await latestSet(shared);
    return level(set, gold) !== undefined && level(set, bronze) !== undefined && level(set, gold) < level(set, bronze);
  }, "the shared service's assignments to rank the at-risk class first", 40_000);
  const polled = await (await fetch(`${base}/api/v1/priorities?service=${shared}&node=test-proxy`)).json();
  assert.ok(level(polled, gold) < level(polled, bronze), JSON.stringify(polled));

  const page = await newPage();
  await page.goto(`${base}/classes`);
  await page.click("#topbar a[href='/priorities']");
  await page.waitForURL(/\/priorities$/);
  assert.equal(await page.getAttribute("#topbar a.active", "href"), "/priorities");
  const card = page.locator(`[data-testid=priority-service][data-service=${shared}]`);
  await card.waitFor();
  assert.equal(await card.locator("[data-testid=service-version]").textContent(), `version ${polled.version}`);
  const rows = await card.locator("tr[data-testid=assignment]").evaluateAll((rs) => rs.map((r) => ({ klass: r.dataset.class, cells: [...r.cells].map((c) => c.textContent) })));
  const row = (k) => rows.find((r) => r.klass === k);
  assert.ok(row(gold) && row(bronze), JSON.stringify(rows));
  assert.equal(Number(row(gold).cells[1]), level(polled, gold));
  assert.equal(Number(row(bronze).cells[1]), level(polled, bronze));
  assert.ok(Number(row(gold).cells[1]) < Number(row(bronze).cells[1]));
  assert.equal(rows[0].klass, gold, "sorted by level, highest first");
  assert.match(row(gold).cells[4], /\S/, "a reason is shown");
  assert.ok((await card.locator("tr[data-testid=history-row]").count()) >= 1);
  assert.match(await card.locator("tr[data-testid=history-row]").first().textContent(), new RegExp(`v${polled.version}`));
  const proxyRow = page.locator("tr[data-testid=proxy-row]", { hasText: "test-proxy" });
  assert.equal(await proxyRow.count(), 1);
  assert.match(await proxyRow.textContent(), new RegExp(`${shared}test-proxyhttp.*v${polled.version}current`));
  // The page reads the current set from the history, so it is never listed as a proxy itself.
  assert.ok(!requests.some((u) => /\/api\/v1\/priorities\?/.test(u)), "the dashboard did not poll as a proxy");

  // An override set through the form applies at the next update with its reason; the proxy
  // that polled before now holds an older version.
  await page.check("[data-testid=priorities-live]");
  assert.match(page.url(), /live=1/);
  await page.fill("[data-testid=override-class]", bronze);
  await page.fill("[data-testid=override-level]", "0");
  await page.click("[data-testid=override-set]");
  await page.locator("tr[data-testid=override-row]", { hasText: bronze }).waitFor();
  assert.deepEqual(await (await fetch(`${base}/api/v1/priorities/overrides`)).json(), { [bronze]: 0 });
  await page.waitForFunction(
    ([svc, k]) => {
      const r = document.querySelector(`[data-testid=priority-service][data-service="${svc}"] tr[data-class="${k}"]`);
      return r && r.cells[1].textContent === "0" && /operator override/.test(r.cells[4].textContent);
    },
    [shared, bronze],
    { timeout: 20_000 },
  );
  assert.match(await proxyRow.textContent(), /behind/);
  // An opened history stays open across live refreshes, and lists the override's version.
  await card.locator("details > summary").click();
  const before = await page.textContent(".page-head .status");
  await page.waitForFunction((t) => document.querySelector(".page-head .status")?.textContent !== t, before, { timeout: 15_000 });
  assert.equal(await card.locator("details").evaluate((d) => d.open), true);
  assert.match(await card.locator("tr[data-testid=history-row]").first().textContent(), /operator override/);

  // A hostile class name typed into the form stays text.
  await page.fill("[data-testid=override-class]", HOSTILE.img);
  await page.fill("[data-testid=override-level]", "3");
  await page.click("[data-testid=override-set]");
  const hostileRow = page.locator("tr[data-testid=override-row]", { hasText: "onerror" });
  await hostileRow.waitFor();
  assert.equal(await hostileRow.locator("td").first().textContent(), HOSTILE.img);
  assert.equal(await page.locator("[data-testid=overrides] img").count(), 0);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  // A bad level is refused by the server and the error shown.
  await page.fill("[data-testid=override-class]", gold);
  await page.fill("[data-testid=override-level]", "99");
  await page.click("[data-testid=override-set]");
  await page.waitForFunction(() => document.querySelector("[data-testid=override-status]")?.classList.contains("error"));
  assert.match(await page.textContent("[data-testid=override-status]"), /level must be an integer/);
  await page.screenshot({ path: path.join(ARTIFACTS, "priorities.png"), fullPage: true });
  await page.click("[data-testid=override-clear]");
  await page.waitForFunction(() => /No overrides/.test(document.querySelector("[data-testid=overrides-list]")?.textContent ?? ""));
  assert.deepEqual(await (await fetch(`${base}/api/v1/priorities/overrides`)).json(), {});

  // The server records each class's budgets at every update step (--budget-step 1s): the
  // history API has points from before the classes page is opened...
  const hist = await (await fetch(`${base}/api/v1/budgets/history?class=${gold}`)).json();
  assert.equal(hist.length, 1);
  assert.equal(hist[0].class, gold);
  assert.ok(hist[0].points.length >= 2, JSON.stringify(hist));
  for (const p of hist[0].points) {
    assert.equal(typeof p.t, "number");
    assert.equal(p.objective_ms, 100);
    assert.equal(typeof p.samples, "number");
  }
  // ...so the chart has >= 2 points right after opening the page, then appends live samples.
  await page.click("#topbar a[href='/classes']");
  const chart = page.locator(`[data-testid=budget-card][data-class=${gold}] [data-testid=budget-chart]`);
  await chart.locator("canvas").first().waitFor();
  const first = Number(await chart.getAttribute("data-samples"));
  assert.ok(first >= 2, `chart points right after opening: ${first}`);
  assert.ok(Number(await chart.getAttribute("data-history")) >= 2);
  assert.match(await chart.textContent(), /from the server's budget history/);
  assert.match(await chart.textContent(), /since this page was opened/);
  await page.waitForFunction(
    ([k, n]) => Number(document.querySelector(`[data-testid=budget-card][data-class="${k}"] [data-testid=budget-chart]`)?.dataset.samples) > n,
    [gold, first],
    { timeout: 15_000 },
  );
  await page.locator(`[data-testid=budget-card][data-class=${gold}]`).screenshot({ path: path.join(ARTIFACTS, "classes-chart.png") });
  await page.close();
});

test("no request leaves the host and no page error occurred", () => {
  assertStayedHome(base, requests, pageErrors);
});
