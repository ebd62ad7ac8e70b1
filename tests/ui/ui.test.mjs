// Browser tests of the meshtrace dashboard: starts the real binary on free ports with a temp
// data dir, loads fixture traces (timestamps shifted to now) plus generated ones, and drives
// Debian's Chromium through playwright-core. Run with `node --test` (see run.sh).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const FIXTURES = path.join(REPO, "tests", "fixtures");
const ARTIFACTS = path.join(HERE, "artifacts");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

const HOSTILE = {
  script: "<script>window.__pwned=1</script>",
  img: '"><img src=x onerror="window.__pwned=1">',
  big: "A".repeat(100 * 1024),
  rtl: "\u202Etxt.exe\u202C \u200Fnormal\u200E \u2067isolated\u2069",
};

let server;
let base;
let otlpUrl;
let zipkinUrl;
let dataDir;
let browser;
let context;
const requests = [];
const pageErrors = [];
const ids = {};

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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const hex = (bytes) => randomBytes(bytes).toString("hex");
const nowNs = () => BigInt(Date.now()) * 1_000_000n;

async function waitFor(fn, what, timeoutMs = 30_000) {
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

async function post(url, body) {
  const res = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const text = await res.text();
  assert.ok(res.ok, `POST ${url} -> ${res.status} ${text}`);
  return text;
}

/** OTLP JSON for one service's spans. */
function otlp(service, spans, resourceAttrs = []) {
  return {
    resourceSpans: [
      {
        resource: { attributes: [{ key: "service.name", value: { stringValue: service } }, ...resourceAttrs] },
        scopeSpans: [{ scope: { name: "ui-test" }, spans }],
      },
    ],
  };
}

const attr = (key, v) => ({ key, value: typeof v === "number" ? { intValue: String(v) } : { stringValue: v } });

function span(traceId, spanId, parent, name, startNs, durNs, attributes = [], extra = {}) {
  return {
    traceId,
    spanId,
    ...(parent ? { parentSpanId: parent } : {}),
    name,
    kind: 2,
    startTimeUnixNano: String(startNs),
    endTimeUnixNano: String(startNs + durNs),
    attributes,
    status: {},
    ...extra,
  };
}

/** The Jaeger storage suite's example trace, moved to a minute ago. */
function shiftedExampleTrace() {
  const doc = JSON.parse(fs.readFileSync(path.join(FIXTURES, "jaeger-storage-suite/traces/example_trace.json"), "utf8"));
  const all = doc.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans));
  const min = all.reduce((m, s) => (BigInt(s.startTimeUnixNano) < m ? BigInt(s.startTimeUnixNano) : m), BigInt(all[0].startTimeUnixNano));
  const delta = nowNs() - 60_000_000_000n - min;
  const mv = (v) => String(BigInt(v) + delta);
  for (const s of all) {
    s.startTimeUnixNano = mv(s.startTimeUnixNano);
    s.endTimeUnixNano = mv(s.endTimeUnixNano);
    for (const e of s.events ?? []) if (e.timeUnixNano) e.timeUnixNano = mv(e.timeUnixNano);
  }
  return doc;
}

/** A Zipkin fixture with its µs timestamps moved so that it starts `agoSec` seconds ago. */
function shiftedZipkin(name, agoSec) {
  const spans = JSON.parse(fs.readFileSync(path.join(FIXTURES, "zipkin", name), "utf8"));
  const min = Math.min(...spans.filter((s) => s.timestamp).map((s) => s.timestamp));
  const delta = Date.now() * 1000 - agoSec * 1e6 - min;
  for (const s of spans) {
    if (s.timestamp) s.timestamp += delta;
    for (const a of s.annotations ?? []) a.timestamp += delta;
  }
  return spans;
}

function hostileTrace() {
  const traceId = hex(16);
  const root = hex(8);
  const t0 = nowNs() - 30_000_000_000n;
  const attrs = [
    attr("xss.script", HOSTILE.script),
    attr("xss.img", HOSTILE.img),
    attr("big.value", HOSTILE.big),
    attr("rtl.value", HOSTILE.rtl),
    attr(HOSTILE.img, "attribute key is hostile too"),
    attr("request_class", HOSTILE.script),
    attr("http.status_code", 500),
  ];
  const spans = [
    span(traceId, root, null, `GET ${HOSTILE.img}`, t0, 80_000_000n, attrs, {
      events: [{ timeUnixNano: String(t0 + 1_000_000n), name: "exception", attributes: [attr("exception.message", HOSTILE.script)] }],
      status: { code: 2, message: HOSTILE.img },
    }),
    span(traceId, hex(8), root, HOSTILE.script, t0 + 5_000_000n, 20_000_000n, [attr("peer", HOSTILE.rtl)]),
  ];
  return { traceId, root, body: otlp("hostile-svc", spans, [attr("host.name", HOSTILE.img)]) };
}

/** A trace with `n` spans in a 4-ary tree, for the virtualized waterfall. */
function bigTrace(n) {
  const traceId = hex(16);
  const t0 = nowNs() - 20_000_000_000n;
  const idsList = Array.from({ length: n }, () => hex(8));
  const spans = idsList.map((id, i) => {
    const parent = i === 0 ? null : idsList[Math.floor((i - 1) / 4)];
    const start = t0 + BigInt(i) * 100_000n;
    const dur = i === 0 ? BigInt(n) * 100_000n + 1_000_000n : 900_000n;
    return span(traceId, id, parent, `op-${i % 17}`, start, dur, [attr("index", i)]);
  });
  return { traceId, first: idsList[0], last: idsList[n - 1], body: otlp("big-svc", spans) };
}

function liveTrace() {
  const traceId = hex(16);
  return { traceId, body: otlp("live-svc", [span(traceId, hex(8), null, "tick", nowNs() - 2_000_000_000n, 3_000_000n)]) };
}

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
  for (const [svc, id] of [["example-service-1", null], ["yelp-main", null], ["hostile-svc", ids.hostile], ["big-svc", ids.big], ["live-svc", live.traceId]]) {
    await waitFor(() => found(svc, id), `${svc} to be queryable`);
  }
}

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  assert.ok(fs.existsSync(binary()), `meshtrace binary not found at ${binary()} (set MESHTRACE_BIN)`);
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM}`);
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "meshtrace-ui-"));
  const [http, grpc, otlpHttp, zipkin] = [await freePort(), await freePort(), await freePort(), await freePort()];
  base = `http://127.0.0.1:${http}`;
  otlpUrl = `http://127.0.0.1:${otlpHttp}`;
  zipkinUrl = `http://127.0.0.1:${zipkin}`;
  const log = fs.openSync(path.join(ARTIFACTS, "server.log"), "w");
  server = spawn(
    binary(),
    [
      "serve",
      "--data-dir", dataDir,
      "--http-listen", `127.0.0.1:${http}`,
      "--otlp-grpc-listen", `127.0.0.1:${grpc}`,
      "--otlp-http-listen", `127.0.0.1:${otlpHttp}`,
      "--zipkin-listen", `127.0.0.1:${zipkin}`,
      "--flush-age", "1s",
      "--max-attribute-value-bytes", "200000",
    ],
    { stdio: ["ignore", log, log], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" } },
  );
  await waitFor(async () => (await fetch(`${base}/readyz`)).ok, "server readiness");
  await loadData();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  context.on("request", (r) => requests.push(r.url()));
  context.on("page", (p) => {
    p.on("pageerror", (e) => pageErrors.push(String(e)));
    p.on("dialog", (d) => {
      pageErrors.push(`unexpected dialog: ${d.message()}`);
      void d.dismiss();
    });
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await Promise.race([new Promise((r) => server.once("exit", r)), sleep(10_000)]);
    if (server.exitCode === null) server.kill("SIGKILL");
  }
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
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
  await page.waitForURL(/\/trace\/[0-9a-f]{32}$/);
  await page.waitForSelector("[data-testid=span-row]");
  const spanRows = await page.locator("[data-testid=span-row]").count();
  assert.ok(spanRows >= 10, `yelp trace shows its spans (${spanRows})`);
  assert.match(await page.textContent("[data-testid=trace-title]"), /routing/);
  const raw = await page.getAttribute("[data-testid=raw-json]", "href");
  assert.match(raw, /^\/api\/traces\/[0-9a-f]{32}$/);
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

test("no request leaves the host and no page error occurred", () => {
  assert.ok(requests.length > 10, `requests were recorded (${requests.length})`);
  const outside = requests.filter((u) => !u.startsWith(base + "/") && !u.startsWith("data:") && !u.startsWith("blob:"));
  assert.deepEqual(outside, []);
  assert.deepEqual(pageErrors, []);
});
