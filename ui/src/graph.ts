// The service graph page (`/graph?class=&lookback=&live=1`): the provenance graph of one class
// (or all) over a time range, laid out in layers by Cytoscape.js with dagre. Edges are labelled
// with rate, error rate and p99; virtual nodes (the user, databases, uninstrumented peers) are
// drawn apart. Service names are untrusted: Cytoscape draws them on a canvas, and the details
// pane only uses text nodes. Live refresh updates the elements in place, keeping the
// selection and, once the user has panned or zoomed, the viewport.

import type { Core, ElementDefinition, EventObject, LayoutOptions, NodeSingular, StylesheetJson } from "cytoscape";
import * as api from "./api";
import { append, h, plainLabel, type Child } from "./dom";
import { formatTime } from "./format";
import type { Page, Router } from "./main";
import { LIVE_INTERVAL_MS, LOOKBACKS, fromLocalInput, lookbackMicros, toLocalInput } from "./search";

/** What the browser tests read through `window.__meshtraceGraph()`. */
export interface GraphProbe {
  rendered: boolean;
  /** The direction of the layers: left to right or top to bottom. */
  rankDir: "LR" | "TB";
  class: string;
  nodes: { id: string; label: string; virtual: boolean; kind: string; clientX: number; clientY: number }[];
  edges: { source: string; target: string; label: string }[];
  zoom: number;
  pan: { x: number; y: number };
  selected: string[];
}

type Kind = api.NodeKind;

export function formatRate(perS: number): string {
  if (!Number.isFinite(perS) || perS <= 0) return "0/s";
  if (perS >= 100) return `${Math.round(perS)}/s`;
  if (perS >= 0.1) return `${Number(perS.toFixed(2))}/s`;
  const perMin = perS * 60;
  return perMin >= 0.1 ? `${Number(perMin.toFixed(2))}/min` : `${Number((perMin * 60).toFixed(2))}/h`;
}

export function formatPercent(share: number): string {
  if (!Number.isFinite(share)) return "–";
  const p = share * 100;
  return `${p === 0 || p >= 10 ? Math.round(p) : Number(p.toFixed(1))}%`;
}

export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (Math.abs(ms) >= 1000) return `${Number((ms / 1000).toFixed(2))}s`;
  if (Math.abs(ms) >= 10) return `${Math.sign(ms) * Math.round(Math.abs(ms))}ms`;
  return `${Number(ms.toFixed(2))}ms`;
}

function edgeId(e: api.GraphEdge): string {
  return `e\u0000${e.caller}\u0000${e.callee}\u0000${e.connection_type}`;
}

/** The server names each node's kind; a node known only from an edge is a service. */
function nodeKind(n: api.GraphNode): Kind {
  return n.kind;
}

function edgeLabel(e: api.GraphEdge): string {
  return `${formatRate(e.rate_per_s)} · ${formatPercent(e.error_rate)} err · p99 ${formatMs(e.p99_ms)}`;
}

/** Cytoscape elements of a graph (node ids are the service names). */
export function elements(g: api.ServiceGraph): ElementDefinition[] {
  const out: ElementDefinition[] = [];
  const seen = new Set<string>();
  const addNode = (n: api.GraphNode) => {
    if (seen.has(n.id)) return;
    seen.add(n.id);
    const name = plainLabel(n.id, 48) || "(empty)";
    const kind = nodeKind(n);
    const stats = kind === "user" ? "" : `\n${formatRate(n.rate)} · ${formatPercent(n.error_rate)} err`;
    const label = `${name}${stats}`;
    const chars = Math.max(name.length, stats.length - 1);
    out.push({
      group: "nodes",
      data: { id: n.id, label, kind, virtual: n.virtual, w: Math.min(380, 28 + chars * 7), node: n },
      classes: [kind, n.virtual ? "virtual" : "", n.error_rate >= 0.05 ? "errors" : n.error_rate > 0 ? "some-errors" : ""].join(" "),
    });
  };
  for (const n of g.nodes) addNode(n);
  for (const e of g.edges) {
    // The server lists every node an edge names; this only keeps an edge drawable if not.
    for (const id of [e.caller, e.callee]) {
      addNode({ id, rate: 0, requests_in: 0, requests_out: 0, traces_rooted: 0, error_rate: 0, virtual: false, kind: "service" });
    }
    out.push({
      group: "edges",
      data: {
        id: edgeId(e),
        source: e.caller,
        target: e.callee,
        label: edgeLabel(e),
        width: Math.min(7, 1.5 + Math.log10(1 + e.requests)),
        edge: e,
      },
      classes: [e.connection_type === "database" ? "database" : "", e.error_rate >= 0.05 ? "errors" : ""].join(" "),
    });
  }
  return out;
}

const STYLE: StylesheetJson = [
  {
    selector: "node",
    style: {
      shape: "round-rectangle",
      width: "data(w)",
      height: 46,
      "background-color": "#ffffff",
      "border-width": 2,
      "border-color": "#4e79a7",
      label: "data(label)",
      "text-wrap": "wrap",
      "text-valign": "center",
      "text-halign": "center",
      "font-size": 12,
      "font-family": "system-ui, sans-serif",
      color: "#1d2330",
    },
  },
  { selector: "node.some-errors", style: { "border-color": "#e8a33d" } },
  { selector: "node.errors", style: { "border-color": "#d1383d", "border-width": 3 } },
  {
    selector: "node.virtual",
    style: { "background-color": "#eef0f4", "border-style": "dashed", "border-color": "#8a93a6", color: "#555d6e", "font-style": "italic" },
  },
  { selector: "node.user", style: { shape: "ellipse", width: 70, height: 40, "background-color": "#dfe7f5", "border-style": "solid" } },
  { selector: "node.database", style: { shape: "barrel", height: 52 } },
  { selector: "node:selected", style: { "border-color": "#2f6fdb", "border-width": 4, "background-color": "#e6eefc" } },
  {
    selector: "edge",
    style: {
      width: "data(width)",
      "line-color": "#9aa3b5",
      "target-arrow-color": "#9aa3b5",
      "target-arrow-shape": "triangle",
      "curve-style": "bezier",
      label: "data(label)",
      "font-size": 10,
      "font-family": "system-ui, sans-serif",
      color: "#434a5a",
      "text-background-color": "#f6f7f9",
      "text-background-opacity": 0.9,
      "text-background-padding": "2px",
    },
  },
  { selector: "edge.database", style: { "line-style": "dashed" } },
  { selector: "edge.errors", style: { "line-color": "#d1383d", "target-arrow-color": "#d1383d", color: "#a0262a" } },
  { selector: "edge:selected", style: { "line-color": "#2f6fdb", "target-arrow-color": "#2f6fdb", color: "#1d4fa8" } },
];

export class GraphPage implements Page {
  readonly el: HTMLElement;
  private readonly status = h("div", { class: "status", role: "status" });
  private readonly classSel = h("select", { "data-testid": "graph-class", "aria-label": "Class", onchange: () => this.changed(true) });
  private readonly lookback = h("select", { "data-testid": "graph-lookback", "aria-label": "Time range", onchange: () => this.rangeChanged() });
  private readonly start = h("input", { type: "datetime-local", "aria-label": "Start" });
  private readonly end = h("input", { type: "datetime-local", "aria-label": "End" });
  private readonly custom = h("span", { class: "custom-range-inline", hidden: true });
  private readonly live = h("input", { type: "checkbox", "data-testid": "graph-live", onchange: () => this.setLive() });
  private readonly canvas = h("div", { class: "graph-canvas", "data-testid": "graph" });
  private readonly empty = h("div", { class: "graph-empty", hidden: true });
  private readonly details = h("aside", { class: "graph-details", "data-testid": "graph-details" });
  private cy: Core | null = null;
  private rendered = false;
  private rankDir: "LR" | "TB" = "LR";
  private userViewport = false;
  private data: api.ServiceGraph | null = null;
  private timer: number | undefined;
  private inflight: AbortController | null = null;
  private disposed = false;

  constructor(private readonly router: Router) {
    for (const [v, label] of LOOKBACKS) this.lookback.appendChild(h("option", { value: v }, label));
    this.custom.append(this.start, " – ", this.end, h("button", { type: "button", onclick: () => this.changed(true) }, "Apply"));
    const toolbar = h(
      "div",
      { class: "graph-toolbar" },
      h("h2", null, "Service graph"),
      h("label", null, "Class ", this.classSel),
      h("label", null, "Range ", this.lookback),
      this.custom,
      h("button", { type: "button", "data-testid": "graph-fit", onclick: () => this.fit() }, "Fit"),
      h("label", { class: "live", title: `refresh every ${LIVE_INTERVAL_MS / 1000}s` }, this.live, " Live"),
      this.status,
      h("span", { class: "spacer" }),
      legend(),
    );
    this.showDetails();
    this.el = h(
      "div",
      { class: "graph-page" },
      toolbar,
      h("div", { class: "graph-body" }, h("div", { class: "graph-wrap" }, this.canvas, this.empty), this.details),
    );
    (window as unknown as { __meshtraceGraph?: () => GraphProbe }).__meshtraceGraph = () => this.probe();
    void this.init();
  }

  dispose(): void {
    this.disposed = true;
    window.clearInterval(this.timer);
    this.inflight?.abort();
    this.cy?.destroy();
    this.cy = null;
    delete (window as unknown as { __meshtraceGraph?: unknown }).__meshtraceGraph;
  }

  private async init(): Promise<void> {
    const q = new URLSearchParams(location.search);
    const klass = q.get("class") ?? "";
    this.setClassOptions([], klass);
    const lb = q.get("lookback") ?? "1h";
    this.lookback.value = LOOKBACKS.some(([v]) => v === lb) ? lb : "1h";
    this.custom.hidden = this.lookback.value !== "custom";
    const start = Number(q.get("start"));
    const end = Number(q.get("end"));
    if (start) this.start.value = toLocalInput(start);
    if (end) this.end.value = toLocalInput(end);
    this.live.checked = q.get("live") === "1";
    this.status.textContent = "Loading graph…";
    let cytoscape: typeof import("cytoscape");
    try {
      cytoscape = (await import("./cy")).default;
    } catch (e) {
      this.showError(e);
      return;
    }
    if (this.disposed) return;
    this.cy = cytoscape({
      container: this.canvas,
      style: STYLE,
      minZoom: 0.1,
      maxZoom: 4,
      wheelSensitivity: 0.3,
      boxSelectionEnabled: false,
      selectionType: "single",
    });
    this.cy.on("dragpan pinchzoom scrollzoom", () => (this.userViewport = true));
    this.cy.on("select unselect", () => this.showDetails());
    this.cy.on("dbltap", "node", (e: EventObject) => {
      const n = e.target as NodeSingular;
      if (!n.data("virtual")) this.router.go(this.searchUrl(n.id()));
    });
    await this.load(false);
    if (!this.disposed) this.setLive();
  }

  /** The time range of the page's query, in µs. */
  private range(q: URLSearchParams): [number, number] {
    const lb = q.get("lookback") ?? "1h";
    if (lb === "custom" && Number(q.get("start")) && Number(q.get("end"))) return [Number(q.get("start")), Number(q.get("end"))];
    const end = Date.now() * 1000;
    return [end - lookbackMicros(lb === "custom" ? "1h" : lb), end];
  }

  private searchUrl(service: string): string {
    const q = new URLSearchParams({ service });
    const page = new URLSearchParams(location.search);
    const lb = page.get("lookback") ?? "1h";
    q.set("lookback", lb);
    if (lb === "custom") {
      for (const k of ["start", "end"]) if (page.get(k)) q.set(k, page.get(k)!);
    }
    return `/search?${q.toString()}`;
  }

  private rangeChanged(): void {
    this.custom.hidden = this.lookback.value !== "custom";
    if (this.lookback.value !== "custom") this.changed(true);
  }

  /** Writes the controls into the URL and reloads; a new class or range re-fits the view. */
  private changed(refit: boolean): void {
    const q = new URLSearchParams();
    if (this.classSel.value) q.set("class", this.classSel.value);
    q.set("lookback", this.lookback.value);
    if (this.lookback.value === "custom") {
      const start = fromLocalInput(this.start.value);
      const end = fromLocalInput(this.end.value);
      if (start === null || end === null || end <= start) {
        this.showError(new Error("custom range: set a start before the end"));
        return;
      }
      q.set("start", String(start));
      q.set("end", String(end));
    }
    if (this.live.checked) q.set("live", "1");
    history.replaceState(null, "", `/graph?${q.toString()}`);
    if (refit) this.userViewport = false;
    void this.load(false);
  }

  private setLive(): void {
    window.clearInterval(this.timer);
    this.timer = undefined;
    if (this.disposed) return;
    const q = new URLSearchParams(location.search);
    if (this.live.checked) q.set("live", "1");
    else q.delete("live");
    history.replaceState(null, "", `/graph?${q.toString()}`);
    if (!this.live.checked) return;
    this.timer = window.setInterval(() => {
      if (!document.hidden) void this.load(true);
    }, LIVE_INTERVAL_MS);
  }

  private async load(background: boolean): Promise<void> {
    if (!this.cy) return;
    if (background && this.inflight) return;
    this.inflight?.abort();
    const ctl = new AbortController();
    this.inflight = ctl;
    const q = new URLSearchParams(location.search);
    const klass = q.get("class") ?? "";
    const [start, end] = this.range(q);
    try {
      const g = await api.graph(klass, start, end, ctl.signal);
      if (this.disposed || ctl.signal.aborted) return;
      this.data = g;
      this.setClassOptions(g.classes, klass);
      this.update(g);
      this.status.classList.remove("error");
      const n = g.nodes.length;
      const updated = this.live.checked ? ` · live, updated ${formatTime(Date.now() * 1000).slice(11, 19)}` : "";
      this.status.textContent = `${n} node${n === 1 ? "" : "s"}, ${g.edges.length} edge${g.edges.length === 1 ? "" : "s"}${updated}`;
    } catch (e) {
      if (!ctl.signal.aborted) this.showError(e);
    } finally {
      if (this.inflight === ctl) this.inflight = null;
    }
  }

  private setClassOptions(classes: api.GraphClass[], selected: string): void {
    const sel = this.classSel;
    const opts: [string, string][] = [["", "All classes"]];
    for (const c of [...classes].sort((a, b) => a.class.localeCompare(b.class))) {
      opts.push([c.class, `${plainLabel(c.class, 60) || "(empty)"} (${c.traces} trace${c.traces === 1 ? "" : "s"})`]);
    }
    if (selected && !opts.some(([v]) => v === selected)) opts.push([selected, `${plainLabel(selected, 60)} (no traces)`]);
    const same = sel.options.length === opts.length && opts.every(([v, l], i) => sel.options[i].value === v && sel.options[i].text === l);
    if (!same) sel.replaceChildren(...opts.map(([v, l]) => h("option", { value: v }, l)));
    sel.value = selected;
  }

  /** Applies a new graph: data updated in place; a changed structure is laid out again. */
  private update(g: api.ServiceGraph): void {
    const cy = this.cy!;
    const els = elements(g);
    const wanted = new Set(els.map((e) => e.data.id as string));
    let structural = false;
    cy.batch(() => {
      const gone = cy.elements().filter((e) => !wanted.has(e.id()));
      if (gone.nonempty()) {
        structural = true;
        cy.remove(gone);
      }
      for (const el of els) {
        const existing = cy.getElementById(el.data.id as string);
        if (existing.nonempty()) {
          existing.data(el.data);
          existing.classes(el.classes as string);
        } else {
          cy.add(el);
          structural = true;
        }
      }
    });
    this.empty.hidden = g.nodes.length > 0;
    this.empty.textContent = g.classes.length
      ? "No calls in this time range for this class."
      : "No traces in this time range yet: complete traces appear here a few seconds after they end.";
    if (structural || !this.rendered) this.layout();
    this.showDetails();
  }

  /**
   * Lays the graph out in layers: left to right, or top to bottom when that lets a long chain
   * be drawn larger in the pane. Keeps the viewport once the user has moved it.
   */
  private layout(): void {
    const cy = this.cy!;
    const keep = this.userViewport ? { zoom: cy.zoom(), pan: { ...cy.pan() } } : null;
    const run = (rankDir: "LR" | "TB") => {
      const options = {
        name: "dagre",
        rankDir,
        nodeSep: rankDir === "LR" ? 30 : 50,
        rankSep: rankDir === "LR" ? 170 : 90,
        edgeSep: 20,
        fit: false,
        animate: false,
      } as unknown as LayoutOptions;
      cy.layout(options).run();
      const bb = cy.elements().boundingBox();
      const w = Math.max(1, cy.width() - 60);
      const hgt = Math.max(1, cy.height() - 60);
      return Math.min(w / Math.max(1, bb.w), hgt / Math.max(1, bb.h));
    };
    this.rankDir = "LR";
    const lr = run("LR");
    if (lr < 0.75 && cy.nodes().length > 2) {
      if (run("TB") > lr * 1.25) this.rankDir = "TB";
      else run("LR");
    }
    if (keep) cy.viewport(keep);
    else this.fit();
    this.rendered = true;
  }

  private fit(): void {
    if (!this.cy || this.cy.elements().empty()) return;
    this.userViewport = false;
    this.cy.fit(undefined, 30);
    if (this.cy.zoom() > 1.5) {
      this.cy.zoom(1.5);
      this.cy.center();
    }
  }

  /** The details of the selected node or edge, as text. */
  private showDetails(): void {
    const sel = this.cy?.$(":selected");
    const el = sel && sel.nonempty() ? sel[0] : null;
    if (!el) {
      this.setDetails(
        h("p", { class: "hint" }, "Click a service or a call for its details; double-click a service to search its traces."),
        this.data ? summary(this.data) : null,
      );
      return;
    }
    if (el.isNode()) {
      const n = el.data("node") as api.GraphNode;
      const kind = el.data("kind") as Kind;
      const edges = this.data?.edges ?? [];
      const calls = (list: api.GraphEdge[], other: (e: api.GraphEdge) => string) =>
        list.length ? h("ul", { class: "graph-calls" }, ...list.map((e) => h("li", null, h("b", null, plainLabel(other(e), 80)), ` ${edgeLabel(e)}`))) : h("p", { class: "none" }, "none");
      this.setDetails(
        h("h3", { "data-testid": "graph-selected" }, plainLabel(n.id, 200)),
        h("p", { class: "kind" }, KIND_TEXT[kind]),
        kind === "service" ? h("a", { class: "button", href: this.searchUrl(n.id), "data-testid": "graph-search-link" }, "Search traces of this service") : null,
        facts([
          ["Rate", formatRate(n.rate)],
          ["Error rate", formatPercent(n.error_rate)],
          ["Requests in", String(n.requests_in ?? "–")],
          ["Requests out", String(n.requests_out ?? "–")],
          ["Traces rooted", String(n.traces_rooted ?? "–")],
        ]),
        h("h4", null, "Called by"),
        calls(edges.filter((e) => e.callee === n.id), (e) => e.caller),
        h("h4", null, "Calls"),
        calls(edges.filter((e) => e.caller === n.id), (e) => e.callee),
      );
      return;
    }
    const e = (el as unknown as { data(k: string): unknown }).data("edge") as api.GraphEdge;
    this.setDetails(
      h("h3", { "data-testid": "graph-selected" }, plainLabel(e.caller, 100), " → ", plainLabel(e.callee, 100)),
      facts([
        ["Connection", e.connection_type],
        ["Requests", String(e.requests)],
        ["Rate", formatRate(e.rate_per_s)],
        ["Error rate", formatPercent(e.error_rate)],
        ["p50", formatMs(e.p50_ms)],
        ["p90", formatMs(e.p90_ms)],
        ["p99", formatMs(e.p99_ms)],
      ]),
    );
  }

  private setDetails(...children: Child[]): void {
    this.details.replaceChildren();
    append(this.details, ...children);
  }

  private probe(): GraphProbe {
    const cy = this.cy;
    const rect = this.canvas.getBoundingClientRect();
    return {
      rendered: this.rendered,
      rankDir: this.rankDir,
      class: this.data?.class ?? "",
      nodes:
        cy?.nodes().map((n) => ({
          id: n.id(),
          label: n.data("label") as string,
          virtual: !!n.data("virtual"),
          kind: n.data("kind") as string,
          clientX: rect.left + n.renderedPosition().x,
          clientY: rect.top + n.renderedPosition().y,
        })) ?? [],
      edges: cy?.edges().map((e) => ({ source: e.source().id(), target: e.target().id(), label: e.data("label") as string })) ?? [],
      zoom: cy?.zoom() ?? 0,
      pan: cy ? { ...cy.pan() } : { x: 0, y: 0 },
      selected: cy?.$(":selected").map((e) => e.id()) ?? [],
    };
  }

  private showError(e: unknown): void {
    this.status.classList.add("error");
    this.status.textContent = e instanceof Error ? e.message : String(e);
  }
}

const KIND_TEXT: Record<Kind, string> = {
  service: "Instrumented service",
  user: "Virtual: the users (callers outside the mesh)",
  database: "Virtual: a database named by client spans",
  peer: "Virtual: an uninstrumented peer named by client spans",
};

function facts(rows: [string, string][]): HTMLElement {
  const dl = h("dl", { class: "facts" });
  for (const [k, v] of rows) dl.append(h("dt", null, k), h("dd", null, v));
  return dl;
}

function summary(g: api.ServiceGraph): HTMLElement {
  const services = g.nodes.filter((n) => !n.virtual).length;
  return facts([
    ["Class", g.class == null ? "all classes" : plainLabel(g.class, 80)],
    ["Services", String(services)],
    ["Virtual nodes", String(g.nodes.length - services)],
    ["Calls", String(g.edges.reduce((s, e) => s + e.requests, 0))],
    ["From", g.start ? formatTime(Date.parse(g.start) * 1000) : "–"],
    ["To", g.end ? formatTime(Date.parse(g.end) * 1000) : "–"],
  ]);
}

function legend(): HTMLElement {
  return h(
    "span",
    { class: "graph-legend" },
    h("span", { class: "lg lg-service" }, "service"),
    h("span", { class: "lg lg-user" }, "user"),
    h("span", { class: "lg lg-virtual" }, "database / uninstrumented peer"),
    h("span", { class: "lg lg-errors" }, "≥ 5% errors"),
    h("small", null, "edges: rate · error rate · p99"),
  );
}
