// The span details panel: identity, timing, status, tags/attributes, process/resource,
// events/logs, references/links and warnings. All values are rendered as text.

import type { KeyValue, Span, Trace } from "./api";
import { h, plainLabel, valueText } from "./dom";
import { formatDuration, formatTime, serviceColor } from "./format";
import { tagValue, type SpanNode } from "./model";

export function valueString(v: unknown): string {
  if (typeof v === "string") return v;
  if (v === undefined) return "";
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

function kvTable(items: KeyValue[] | null | undefined, testid: string): HTMLElement {
  if (!items?.length) return h("p", { class: "none" }, "none");
  const body = h("tbody");
  const sorted = [...items].sort((a, b) => String(a.key).localeCompare(String(b.key)));
  for (const kv of sorted) {
    body.appendChild(
      h("tr", null, h("th", { scope: "row" }, valueText(String(kv.key))), h("td", null, valueText(valueString(kv.value)))),
    );
  }
  return h("table", { class: "kv", "data-testid": testid }, body);
}

function section(title: string, count: number | null, ...content: HTMLElement[]): HTMLElement {
  return h(
    "details",
    { class: "section", open: true },
    h("summary", null, title, count !== null ? h("span", { class: "count" }, String(count)) : null),
    ...content,
  );
}

function statusOf(span: Span): { code: string; message: string | null; error: boolean } {
  const code = tagValue(span.tags, "otel.status_code");
  const msg = tagValue(span.tags, "otel.status_description");
  const err = tagValue(span.tags, "error");
  const isErr = err === true || err === "true" || (typeof code === "string" && code.toUpperCase() === "ERROR");
  return {
    code: typeof code === "string" ? code : isErr ? "ERROR" : "UNSET",
    message: msg === undefined ? null : valueString(msg),
    error: isErr,
  };
}

export interface DetailsContext {
  trace: Trace;
  traceStart: number;
  criticalSegments: number;
  /** Selects another span of the same trace. */
  selectSpan: (spanId: string) => void;
}

export function spanDetails(node: SpanNode, ctx: DetailsContext): HTMLElement {
  const s = node.span;
  const process = ctx.trace.processes?.[s.processID];
  const status = statusOf(s);
  const kind = tagValue(s.tags, "span.kind");
  const swatch = h("span", { class: "swatch" });
  swatch.style.background = serviceColor(node.service);
  const facts = h(
    "dl",
    { class: "facts" },
    h("dt", null, "Span ID"),
    h("dd", null, h("code", null, s.spanID)),
    h("dt", null, "Start"),
    h("dd", null, `+${formatDuration(s.startTime - ctx.traceStart)} (${formatTime(s.startTime)})`),
    h("dt", null, "Duration"),
    h("dd", null, formatDuration(s.duration)),
    h("dt", null, "Kind"),
    h("dd", null, kind === undefined ? "unspecified" : plainLabel(valueString(kind))),
    h("dt", null, "Status"),
    h(
      "dd",
      { class: status.error ? "status-error" : "", "data-testid": "span-status" },
      status.code,
      status.message ? h("span", null, " — ", valueText(status.message)) : null,
    ),
    ctx.criticalSegments ? h("dt", null, "Critical path") : null,
    ctx.criticalSegments ? h("dd", null, `${ctx.criticalSegments} segment(s) on the critical path`) : null,
  );
  const logs = (s.logs ?? []).map((log) =>
    h(
      "div",
      { class: "log" },
      h("div", { class: "log-time" }, `+${formatDuration(log.timestamp - ctx.traceStart)}`),
      kvTable(log.fields, "log-fields"),
    ),
  );
  return h(
    "div",
    { class: "details", "data-testid": "span-details" },
    h("h3", null, swatch, valueText(node.service), ": ", valueText(s.operationName)),
    facts,
    section("Tags / attributes", s.tags?.length ?? 0, kvTable(s.tags, "span-tags")),
    section(
      "Process / resource",
      process?.tags?.length ?? 0,
      h("p", null, "service.name: ", valueText(process?.serviceName ?? "unknown")),
      kvTable(process?.tags, "process-tags"),
    ),
    section("Events / logs", logs.length, ...(logs.length ? logs : [h("p", { class: "none" }, "none")])),
    section("References / links", s.references?.length ?? 0, references(s, ctx)),
    s.warnings?.length ? section("Warnings", s.warnings.length, warnings(s.warnings)) : h("span"),
  );
}

function references(s: Span, ctx: DetailsContext): HTMLElement {
  const refs = s.references ?? [];
  if (!refs.length) return h("p", { class: "none" }, "none (root span)");
  const ids = new Set(ctx.trace.spans.map((x) => x.spanID));
  const list = h("ul", { class: "refs" });
  for (const r of refs) {
    const same = r.traceID === ctx.trace.traceID && ids.has(r.spanID);
    const target = same
      ? h("button", { type: "button", class: "link", onclick: () => ctx.selectSpan(r.spanID) }, `span ${r.spanID}`)
      : h("a", { href: `/trace/${encodeURIComponent(r.traceID)}` }, `trace ${r.traceID} / span ${r.spanID}`);
    list.appendChild(h("li", null, h("span", { class: "ref-type" }, plainLabel(r.refType, 40)), " ", target));
  }
  return list;
}

function warnings(items: string[]): HTMLElement {
  const list = h("ul", { class: "warnings" });
  for (const w of items) list.appendChild(h("li", null, valueText(String(w))));
  return list;
}
