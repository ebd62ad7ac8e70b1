// The services page (`/services?service=&lookback=&spanKind=&end=`): one service's RED metrics over
// time, the view of the Jaeger UI's Monitor tab, read from Jaeger's SPM API (`/api/metrics/*`,
// which the server computes from per-minute rollups of the stored spans). Request rate, error
// rate and latency p50/p95/p99 are charted (`redchart.ts`); a table lists the service's
// operations with their latest rate, error rate and p95, sorted by rate, each linking to a
// trace search. The page says which window each point covers.
// Service and operation names are untrusted: text nodes only.

import * as api from "./api";
import { h, plainLabel, type Child } from "./dom";
import { formatTime } from "./format";
import { formatMs, formatPercent, formatRate } from "./graph";
import type { Page, Router } from "./main";
import { RedChart, latest, redWindow, seriesOf, servicePoints, type ChartSpec, type Point, type RedSeries, type RedWindow } from "./redchart";
import { LOOKBACKS, lookbackMicros } from "./search";

const RANGES = LOOKBACKS.filter(([v]) => v !== "custom");
const DEFAULT_LOOKBACK = "1h";

const KINDS: [api.SpanKindName, string][] = [
  ["server", "Server"],
  ["client", "Client"],
  ["producer", "Producer"],
  ["consumer", "Consumer"],
  ["internal", "Internal"],
  ["unspecified", "Unspecified"],
];

/** Used when `GET /api/metrics/minstep` fails: the server's one-minute rollups. */
const FALLBACK_MIN_STEP_MS = 60_000;

/** The latency chart's quantiles; the operations table shows the second. */
const QUANTILES = [0.5, 0.95, 0.99];

const CHARTS: ChartSpec[] = [
  { metric: "calls", title: "Request rate", unit: "calls/s", series: [{ label: "Requests", stroke: "#2f6fdb" }], factor: 1, format: formatRate, minTop: 0.1, fill: 0 },
  { metric: "errors", title: "Error rate", unit: "%", series: [{ label: "Errors", stroke: "#d1383d" }], factor: 100, format: formatPercent, minTop: 5, fill: null },
  {
    metric: "latency",
    title: "Latency",
    unit: "ms",
    series: [
      { label: "p50", stroke: "#59a14f" },
      { label: "p95", stroke: "#f28e2b" },
      { label: "p99", stroke: "#b07aa1" },
    ],
    factor: 1,
    format: formatMs,
    minTop: 1,
    fill: null,
  },
];

/** What the page shows: its query string. */
interface View {
  service: string;
  lookback: string;
  spanKind: api.SpanKindName;
  /** Where the range ends (unix ms; `end=` in the URL, for a fixed, shareable range); now when absent. */
  end?: number;
}

function viewOf(search: string): View {
  const q = new URLSearchParams(search);
  const lb = q.get("lookback") ?? DEFAULT_LOOKBACK;
  const kind = q.get("spanKind") ?? "server";
  return {
    service: q.get("service") ?? "",
    lookback: RANGES.some(([v]) => v === lb) ? lb : DEFAULT_LOOKBACK,
    spanKind: KINDS.find(([k]) => k === kind)?.[0] ?? "server",
    end: Number(q.get("end")) > 0 ? Math.trunc(Number(q.get("end"))) : undefined,
  };
}

function viewUrl(v: View): string {
  const q = new URLSearchParams();
  if (v.service) q.set("service", v.service);
  q.set("lookback", v.lookback);
  if (v.spanKind !== "server") q.set("spanKind", v.spanKind);
  if (v.end) q.set("end", String(v.end));
  return `/services?${q.toString()}`;
}

/** One operation's latest points. */
export interface OperationRow {
  operation: string;
  rate: Point | null;
  errors: Point | null;
  p95: Point | null;
}

/** The operations of the grouped answers, by latest rate (highest first), then name. */
export function operationRows(calls: RedSeries[], errors: RedSeries[], p95: RedSeries[]): OperationRow[] {
  const rows = new Map<string, OperationRow>();
  const row = (operation: string): OperationRow => {
    let r = rows.get(operation);
    if (!r) {
      r = { operation, rate: null, errors: null, p95: null };
      rows.set(operation, r);
    }
    return r;
  };
  for (const s of calls) row(s.operation).rate = latest(s.points);
  for (const s of errors) row(s.operation).errors = latest(s.points);
  for (const s of p95) row(s.operation).p95 = latest(s.points);
  return [...rows.values()].sort((a, b) => (b.rate?.[1] ?? 0) - (a.rate?.[1] ?? 0) || a.operation.localeCompare(b.operation));
}

/** The answers of one view. */
interface RedData {
  calls: Point[];
  errors: Point[];
  /** One per quantile. */
  latency: Point[][];
  operations: OperationRow[];
}

async function fetchRed(v: View, w: RedWindow, signal: AbortSignal): Promise<RedData> {
  const service = { service: v.service, spanKind: v.spanKind, ...w, groupByOperation: false };
  const byOp = { ...service, groupByOperation: true };
  const [calls, errors, opCalls, opErrors, opP95, ...latency] = await Promise.all([
    api.redMetric("calls", service, signal),
    api.redMetric("errors", service, signal),
    api.redMetric("calls", byOp, signal),
    api.redMetric("errors", byOp, signal),
    api.latencyMetric({ ...byOp, quantile: QUANTILES[1] }, signal),
    ...QUANTILES.map((quantile) => api.latencyMetric({ ...service, quantile }, signal)),
  ]);
  return {
    calls: servicePoints(calls),
    errors: servicePoints(errors),
    latency: latency.map(servicePoints),
    operations: operationRows(seriesOf(opCalls), seriesOf(opErrors), seriesOf(opP95)),
  };
}

export class ServicesPage implements Page {
  readonly el: HTMLElement;
  private readonly status = h("div", { class: "status", role: "status" });
  private readonly serviceSel = h("select", { "data-testid": "services-service", "aria-label": "Service", onchange: () => this.changed() });
  private readonly lookbackSel = h("select", { "data-testid": "services-lookback", "aria-label": "Time range", onchange: () => this.changed() });
  private readonly kindSel = h("select", { "data-testid": "services-kind", "aria-label": "Span kind", onchange: () => this.changed() });
  private readonly windowNote = h("p", { class: "hint window-note", "data-testid": "services-window" });
  private readonly body = h("div", { class: "services-body" });
  private readonly charts = CHARTS.map((spec) => new RedChart(spec));
  private readonly onResize = () => this.charts.forEach((c) => c.resize());
  private minStepMs: number | null = null;
  /** The URL of the view the body shows. */
  private shown = "";
  private inflight: AbortController | null = null;
  private disposed = false;

  constructor(_router: Router) {
    for (const [v, label] of RANGES) this.lookbackSel.appendChild(h("option", { value: v }, label));
    for (const [v, label] of KINDS) this.kindSel.appendChild(h("option", { value: v }, label));
    this.el = h(
      "div",
      { class: "classes-page services-page" },
      h(
        "div",
        { class: "page-head services-controls" },
        h("h2", null, "Services"),
        h("label", null, "Service ", this.serviceSel),
        h("label", null, "Range ", this.lookbackSel),
        h("label", null, "Span kind ", this.kindSel),
        h("button", { type: "button", "data-testid": "services-refresh", onclick: () => void this.load() }, "Refresh"),
        this.status,
      ),
      this.windowNote,
      this.body,
    );
    window.addEventListener("resize", this.onResize);
    void this.init();
  }

  dispose(): void {
    this.disposed = true;
    window.removeEventListener("resize", this.onResize);
    this.inflight?.abort();
    for (const c of this.charts) c.destroy();
  }

  private async init(): Promise<void> {
    const v = viewOf(location.search);
    this.lookbackSel.value = v.lookback;
    this.kindSel.value = v.spanKind;
    this.setServices([], v.service);
    try {
      const services = await api.services();
      if (this.disposed) return;
      this.setServices(services, v.service);
    } catch (e) {
      this.showError(e);
    }
    await this.load();
  }

  /** The service picker: the known services, plus the wanted one if it is not (yet) known. */
  private setServices(services: string[], wanted: string): void {
    const names = wanted && !services.includes(wanted) ? [...services, wanted] : services;
    this.serviceSel.replaceChildren(
      h("option", { value: "" }, services.length ? "— choose a service —" : "no services yet"),
      ...names.map((s) => h("option", { value: s }, plainLabel(s, 120))),
    );
    this.serviceSel.value = wanted;
  }

  /** Writes the controls into the URL and reloads. */
  private changed(): void {
    const v: View = {
      service: this.serviceSel.value,
      lookback: this.lookbackSel.value,
      spanKind: KINDS.find(([k]) => k === this.kindSel.value)?.[0] ?? "server",
      end: viewOf(location.search).end,
    };
    history.replaceState(null, "", viewUrl(v));
    void this.load();
  }

  private async load(): Promise<void> {
    this.inflight?.abort();
    const v = viewOf(location.search);
    if (!v.service) {
      this.shown = "";
      this.windowNote.textContent = "";
      this.status.textContent = "";
      this.body.replaceChildren(h("p", { class: "empty" }, "Choose a service to see its request rate, error rate and latency over time."));
      return;
    }
    const ctl = new AbortController();
    this.inflight = ctl;
    this.status.classList.remove("error");
    this.status.textContent = "Loading…";
    if (viewUrl(v) !== this.shown) {
      // Another service, range or kind: never show the old one's numbers under it.
      this.shown = "";
      this.windowNote.textContent = "";
      this.body.replaceChildren();
    }
    try {
      const w = redWindow(lookbackMicros(v.lookback) / 1000, await this.minStep(ctl.signal), v.end ?? Date.now());
      const data = await fetchRed(v, w, ctl.signal);
      if (this.disposed || ctl.signal.aborted) return;
      this.show(v, w, data);
    } catch (e) {
      if (!ctl.signal.aborted) this.showError(e);
    } finally {
      if (this.inflight === ctl) this.inflight = null;
    }
  }

  /** The server's minstep, asked once; the server's one minute when that fails. */
  private async minStep(signal: AbortSignal): Promise<number> {
    if (this.minStepMs === null) {
      try {
        this.minStepMs = await api.metricsMinStep(signal);
      } catch (e) {
        if (signal.aborted) throw e;
        return FALLBACK_MIN_STEP_MS;
      }
    }
    return this.minStepMs;
  }

  private show(v: View, w: RedWindow, d: RedData): void {
    this.shown = viewUrl(v);
    this.windowNote.textContent = windowText(v, w);
    const n = d.operations.length;
    this.status.textContent = `${n} operation${n === 1 ? "" : "s"} · updated ${formatTime(Date.now() * 1000).slice(11, 19)}`;
    if (!d.calls.length) {
      this.body.replaceChildren(emptyNote(v));
      return;
    }
    this.body.replaceChildren(h("div", { class: "red-charts" }, ...this.charts.map((c) => c.el)), operationsPanel(v, d.operations));
    const [calls, errors, latency] = this.charts;
    calls.update(w, [d.calls]);
    errors.update(w, [d.errors]);
    latency.update(w, d.latency);
  }

  private showError(e: unknown): void {
    this.status.classList.add("error");
    this.status.textContent = e instanceof Error ? e.message : String(e);
  }
}

/** Which window the points use, e.g. "Points every 1 min over the last hour, ...". */
function windowText(v: View, w: RedWindow): string {
  const range = rangeLabel(v);
  return (
    `Points every ${span(w.step)} over the ${range}, each computed over the ${span(w.ratePer)} ` +
    `before it from ${v.spanKind} spans (the server counts the whole minutes that ended by then, so the minute in progress shows once it is over). ` +
    "A window without calls has no point: the request rate is drawn as 0 there, error rate and latency left blank." +
    (v.end ? ` The range ends at ${formatTime(v.end * 1000).slice(0, 19)} (end= in the address).` : "")
  );
}

/** "last hour". */
function rangeLabel(v: View): string {
  return (RANGES.find(([k]) => k === v.lookback)?.[1] ?? v.lookback).toLowerCase();
}

/** A step or window: "1 min", "12 min", "1 h". */
function span(ms: number): string {
  const min = ms / 60_000;
  if (min >= 60 && min % 60 === 0) return `${min / 60} h`;
  if (min >= 1) return `${Number(min.toFixed(1))} min`;
  return `${Number((ms / 1000).toFixed(1))} s`;
}

function emptyNote(v: View): HTMLElement {
  const range = rangeLabel(v);
  return h(
    "section",
    { class: "panel" },
    h(
      "p",
      { class: "empty", "data-testid": "services-empty" },
      "No calls in this range: ",
      h("b", null, plainLabel(v.service, 120)),
      ` has no ${v.spanKind} spans in the ${range}. Try a longer range or another span kind.`,
    ),
  );
}

function searchUrl(v: View, operation: string): string {
  return `/search?${new URLSearchParams({ service: v.service, operation, lookback: v.lookback }).toString()}`;
}

function operationsPanel(v: View, rows: OperationRow[]): HTMLElement {
  const head = ["Operation", "Request rate", "Error rate", "P95 latency", "Latest point"];
  const body = rows.map((r) =>
    h(
      "tr",
      { "data-testid": "red-op" },
      ...[
        h("a", { href: searchUrl(v, r.operation), class: "op-link", "data-testid": "red-op-link" }, plainLabel(r.operation, 160) || "(empty)"),
        valueCell(r.rate, formatRate, (x) => `${exact(x)} calls/s`),
        valueCell(r.errors, formatPercent, (x) => `${exact(x * 100)}% of calls`, (x) => x > 0),
        valueCell(r.p95, formatMs, (x) => `${exact(x)} ms`),
        r.rate ? formatTime(r.rate[0] * 1000).slice(11, 16) : "–",
      ].map((c: Child) => h("td", null, c)),
    ),
  );
  return h(
    "section",
    { class: "panel", "data-testid": "red-ops" },
    h("h3", null, "Operations"),
    h("p", { class: "hint" }, "Each operation's latest point, by request rate; an operation links to a search for its traces."),
    rows.length
      ? h("table", { class: "grid red-ops" }, h("thead", null, h("tr", null, ...head.map((c) => h("th", null, c)))), h("tbody", null, ...body))
      : h("p", { class: "empty" }, "No operation has calls in this range."),
  );
}

/** A formatted value with the exact one as its tooltip. */
function valueCell(p: Point | null, format: (v: number) => string, exact: (v: number) => string, bad?: (v: number) => boolean): Child {
  if (!p) return "–";
  return h("span", { class: `num${bad?.(p[1]) ? " neg" : ""}`, title: exact(p[1]) }, format(p[1]));
}

/** Six significant digits. */
function exact(v: number): string {
  return String(Number(v.toPrecision(6)));
}
