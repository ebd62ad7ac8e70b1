// The trace page (`/trace/{traceID}`): summary header, the waterfall, span details on click,
// a link to the raw JSON, and critical-path highlighting when the provenance API answers.

import * as api from "./api";
import { storedTenant, storedToken } from "./auth";
import { spanDetails } from "./details";
import { h, plainLabel } from "./dom";
import { formatDuration, formatTime } from "./format";
import { buildTree, summarize, type SpanNode } from "./model";
import type { Page, Router } from "./main";
import { Waterfall, type CriticalPath } from "./waterfall";

export class TracePage implements Page {
  readonly el: HTMLElement;
  private waterfall: Waterfall | null = null;
  private critical: CriticalPath = new Map();
  private disposed = false;

  constructor(
    _router: Router,
    private readonly traceId: string,
  ) {
    this.el = h("div", { class: "trace-page" }, h("div", { class: "status" }, "Loading trace…"));
    void this.load();
  }

  dispose(): void {
    this.disposed = true;
    this.waterfall?.dispose();
  }

  private async load(): Promise<void> {
    let trace: api.Trace | null;
    try {
      trace = await api.trace(this.traceId);
    } catch (e) {
      this.message("Could not load the trace", e instanceof Error ? e.message : String(e));
      return;
    }
    if (this.disposed) return;
    if (!trace || !trace.spans?.length) {
      this.message("Trace not found", `No trace with ID ${this.traceId}.`);
      return;
    }
    this.show(trace);
    const prov = await api.provenance(trace.traceID);
    if (prov && !this.disposed) this.showProvenance(prov);
  }

  private message(title: string, text: string): void {
    this.el.replaceChildren(
      h("div", { class: "message" }, h("h2", null, title), h("p", null, text), h("a", { href: "/search" }, "Back to search")),
    );
  }

  private readonly badges = h("span", { class: "badges" });
  private readonly detailsPane = h(
    "aside",
    { class: "details-pane" },
    h("p", { class: "hint" }, "Click a span to see its details."),
  );

  private show(trace: api.Trace): void {
    const sum = summarize(trace);
    const roots = buildTree(trace);
    const depth = maxDepth(roots);
    const ctx = {
      trace,
      traceStart: sum.start,
      selectSpan: (id: string) => this.waterfall?.select(id),
    };
    const onSelect = (node: SpanNode) => {
      const segs = this.critical.get(node.span.spanID)?.length ?? 0;
      this.detailsPane.replaceChildren(spanDetails(node, { ...ctx, criticalSegments: segs }));
      this.detailsPane.scrollTop = 0;
    };
    this.waterfall = new Waterfall(roots, sum.start, sum.duration, onSelect);
    const wf = this.waterfall;
    const stats = h(
      "dl",
      { class: "trace-stats" },
      stat("Trace ID", h("code", { "data-testid": "trace-id" }, trace.traceID)),
      stat("Started", formatTime(sum.start)),
      stat("Duration", formatDuration(sum.duration)),
      stat("Services", String(sum.services.length)),
      stat("Spans", String(sum.spanCount)),
      stat("Depth", String(depth)),
      stat("Errors", String(sum.errorCount)),
    );
    const actions = h(
      "div",
      { class: "actions" },
      h("button", { type: "button", onclick: () => wf.expandAll() }, "Expand all"),
      h("button", { type: "button", onclick: () => wf.collapseBelow(1) }, "Collapse to depth 1"),
      h("a", { href: api.traceUrl(trace.traceID), target: "_blank", rel: "noopener", "data-testid": "raw-json", onclick: rawJson }, "Raw JSON"),
    );
    const warnings = trace.warnings?.length
      ? h("p", { class: "warn" }, `Warnings: ${trace.warnings.map((w) => plainLabel(String(w))).join("; ")}`)
      : null;
    this.el.replaceChildren(
      h(
        "div",
        { class: "trace-head" },
        h(
          "h2",
          { "data-testid": "trace-title" },
          h("b", null, plainLabel(sum.rootService, 80)),
          ": ",
          plainLabel(sum.rootOperation, 160),
          this.badges,
        ),
        stats,
        actions,
        warnings,
      ),
      h("div", { class: "trace-body" }, wf.el, this.detailsPane),
    );
    document.title = `${plainLabel(sum.rootOperation, 60)} · meshtrace`;
  }

  private showProvenance(prov: api.Provenance): void {
    const path: CriticalPath = new Map();
    for (const seg of prov.critical_path ?? []) {
      if (!seg || typeof seg.span_id !== "string") continue;
      const start = Number(seg.start_us);
      const end = Number(seg.end_us);
      if (!Number.isFinite(start) || !Number.isFinite(end)) continue;
      const list = path.get(seg.span_id) ?? [];
      list.push({ start, end });
      path.set(seg.span_id, list);
    }
    this.critical = path;
    this.badges.replaceChildren();
    if (prov.class) this.badges.appendChild(h("span", { class: "badge", title: "request class" }, plainLabel(String(prov.class), 40)));
    if (path.size) {
      this.badges.appendChild(h("span", { class: "badge crit", "data-testid": "critical-badge" }, `critical path: ${path.size} spans`));
      this.waterfall?.setCriticalPath(path);
    }
  }
}

/** A link cannot send the bearer token or tenant: with one stored, the raw JSON is fetched with it. */
function rawJson(e: Event): void {
  if (!storedToken() && !storedTenant()) return;
  e.preventDefault();
  const href = (e.currentTarget as HTMLAnchorElement).getAttribute("href") ?? "";
  api.openRaw(href).catch(() => undefined); // a failed fetch opens nothing, as a dead link would
}

function stat(label: string, value: string | HTMLElement): HTMLElement {
  return h("div", null, h("dt", null, label), h("dd", null, value));
}

function maxDepth(roots: SpanNode[]): number {
  let max = 0;
  const stack = [...roots];
  while (stack.length) {
    const n = stack.pop()!;
    max = Math.max(max, n.depth + 1);
    stack.push(...n.children);
  }
  return max;
}
