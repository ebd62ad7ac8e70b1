// Test data for the dashboard's browser tests: OTLP JSON builders, fixture traces moved to the
// present, hostile values and generated traces (big, live, per class, shared service, known RED
// metrics).

import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "fixtures");

export const HOSTILE = {
  script: "<script>window.__pwned=1</script>",
  img: '"><img src=x onerror="window.__pwned=1">',
  big: "A".repeat(100 * 1024),
  rtl: "\u202Etxt.exe\u202C \u200Fnormal\u200E \u2067isolated\u2069",
};

export const hex = (bytes) => randomBytes(bytes).toString("hex");
export const nowNs = () => BigInt(Date.now()) * 1_000_000n;

/** OTLP JSON for one service's spans. */
export function otlp(service, spans, resourceAttrs = []) {
  return {
    resourceSpans: [
      {
        resource: { attributes: [{ key: "service.name", value: { stringValue: service } }, ...resourceAttrs] },
        scopeSpans: [{ scope: { name: "ui-test" }, spans }],
      },
    ],
  };
}

export const attr = (key, v) => ({ key, value: typeof v === "number" ? { intValue: String(v) } : { stringValue: v } });

export function span(traceId, spanId, parent, name, startNs, durNs, attributes = [], extra = {}) {
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
export function shiftedExampleTrace() {
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
export function shiftedZipkin(name, agoSec) {
  const spans = JSON.parse(fs.readFileSync(path.join(FIXTURES, "zipkin", name), "utf8"));
  const min = Math.min(...spans.filter((s) => s.timestamp).map((s) => s.timestamp));
  const delta = Date.now() * 1000 - agoSec * 1e6 - min;
  for (const s of spans) {
    if (s.timestamp) s.timestamp += delta;
    for (const a of s.annotations ?? []) a.timestamp += delta;
  }
  return spans;
}

export function hostileTrace() {
  const traceId = hex(16);
  const root = hex(8);
  const t0 = nowNs() - 30_000_000_000n;
  const attrs = [
    attr("xss.script", HOSTILE.script),
    attr("xss.img", HOSTILE.img),
    attr("big.value", HOSTILE.big),
    attr("rtl.value", HOSTILE.rtl),
    attr(HOSTILE.img, "attribute key is hostile too"),
    attr("mesh.class", HOSTILE.script),
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
export function bigTrace(n) {
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

export function liveTrace() {
  const traceId = hex(16);
  return { traceId, body: otlp("live-svc", [span(traceId, hex(8), null, "tick", nowNs() - 2_000_000_000n, 3_000_000n)]) };
}

/**
 * A two-service trace of class `klass` (explicit `mesh.class` on the entry span): the frontend
 * serves the user, calls the cart (client/server pair) and a database (client span naming it).
 */
export function classTrace(frontend, klass, cart = "shop-cart", db = "orders-db", peer = null) {
  const traceId = hex(16);
  const [root, cli, srv, dbSpan] = [hex(8), hex(8), hex(8), hex(8)];
  const t0 = nowNs() - 10_000_000_000n;
  const client = (id, name, start, dur, attributes) => ({ ...span(traceId, id, root, name, start, dur, attributes), kind: 3 });
  const frontSpans = [
    span(traceId, root, null, "POST /checkout", t0, 60_000_000n, [attr("mesh.class", klass), attr("http.route", "/checkout")]),
    client(cli, "GET /cart", t0 + 5_000_000n, 30_000_000n, []),
    client(dbSpan, "SELECT orders", t0 + 40_000_000n, 8_000_000n, [attr("db.system", "postgresql"), attr("db.name", db)]),
  ];
  if (peer) frontSpans.push(client(hex(8), "GET /peer", t0 + 50_000_000n, 5_000_000n, [attr("peer.service", peer)]));
  return {
    traceId,
    body: {
      resourceSpans: [
        ...otlp(frontend, frontSpans).resourceSpans,
        ...otlp(cart, [span(traceId, srv, cli, "GET /cart", t0 + 6_000_000n, 28_000_000n)]).resourceSpans,
      ],
    },
  };
}

/**
 * A trace of class `klass` entering at `front`, which calls the `shared` service; the shared
 * service's server span takes `sharedMs`.
 */
export function sharedTrace(front, shared, klass, sharedMs) {
  const traceId = hex(16);
  const [root, cli, srv] = [hex(8), hex(8), hex(8)];
  const t0 = nowNs() - 3_000_000_000n;
  const ms = (n) => BigInt(Math.round(n * 1e6));
  return {
    resourceSpans: [
      ...otlp(front, [
        span(traceId, root, null, "POST /order", t0, ms(sharedMs + 20), [attr("mesh.class", klass), attr("http.route", "/order")]),
        { ...span(traceId, cli, root, "GET /stock", t0 + ms(5), ms(sharedMs + 4)), kind: 3 },
      ]).resourceSpans,
      ...otlp(shared, [span(traceId, srv, cli, "GET /stock", t0 + ms(6), ms(sharedMs))]).resourceSpans,
    ],
  };
}

/**
 * The services page's load: [operation, OTLP span kind (2 server, 3 client), spans, duration
 * ms, spans with error status].
 */
export const RED_LOAD = [
  ["GET /cart", 2, 60, 10, 0],
  ["POST /pay", 2, 30, 20, 6],
  ["GET inventory", 3, 40, 5, 0],
];

/** Every span of RED_LOAD (one trace each), all starting within the minute that begins at `minuteNs`. */
export function redTraces(service, minuteNs) {
  const spans = [];
  let i = 0;
  for (const [name, kind, count, ms, errors] of RED_LOAD) {
    for (let k = 0; k < count; k++, i++) {
      const start = minuteNs + 1_000_000_000n + BigInt(i) * 300_000_000n;
      const status = k < errors ? { status: { code: 2, message: "payment declined" } } : {};
      spans.push({ ...span(hex(16), hex(8), null, name, start, BigInt(ms) * 1_000_000n), kind, ...status });
    }
  }
  if (i * 300_000_000 >= 58_000_000_000) throw new Error("the RED load must fit one minute");
  return otlp(service, spans);
}
