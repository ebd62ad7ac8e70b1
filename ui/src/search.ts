// The search page (`/search`, `/`): the form, the scatter plot and the result list. The URL
// query string holds the submitted search, so a search can be shared, reloaded and refreshed
// live without touching what the user is typing.

import * as api from "./api";
import { clear, h, plainLabel } from "./dom";
import { formatAge, formatDuration, formatTime, serviceColor } from "./format";
import { summarize, type TraceSummary } from "./model";
import type { Page, Router } from "./main";
import { Scatter } from "./scatter";

export const LOOKBACKS: [string, string][] = [
  ["5m", "Last 5 minutes"],
  ["15m", "Last 15 minutes"],
  ["1h", "Last hour"],
  ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"],
  ["48h", "Last 2 days"],
  ["custom", "Custom range"],
];

const SORTS: [string, string, (a: TraceSummary, b: TraceSummary) => number][] = [
  ["recent", "Most recent", (a, b) => b.start - a.start],
  ["longest", "Longest first", (a, b) => b.duration - a.duration],
  ["shortest", "Shortest first", (a, b) => a.duration - b.duration],
  ["spans", "Most spans", (a, b) => b.spanCount - a.spanCount],
  ["errors", "Most errors", (a, b) => b.errorCount - a.errorCount],
];

export const LIVE_INTERVAL_MS = 5000;
const DURATION_RE = /^\d+(\.\d+)?(ns|us|µs|ms|s|m|h)$/;

/** Parses `key=value key2="a b"` into a tags object; throws on a malformed token. */
export function parseTags(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /\s*([^\s=]+)=(?:"([^"]*)"|(\S*))/y;
  let rest = text.trim();
  while (rest.length) {
    re.lastIndex = 0;
    const m = re.exec(rest);
    if (!m) throw new Error(`malformed tag ${JSON.stringify(rest.split(/\s+/)[0])}: want key=value`);
    out[m[1]] = m[2] ?? m[3] ?? "";
    rest = rest.slice(re.lastIndex).trim();
  }
  return out;
}

export function toLocalInput(us: number): string {
  const d = new Date(us / 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

export function fromLocalInput(v: string): number | null {
  const ms = new Date(v).getTime();
  return Number.isNaN(ms) ? null : ms * 1000;
}

interface Form {
  el: HTMLFormElement;
  service: HTMLSelectElement;
  operation: HTMLSelectElement;
  tags: HTMLInputElement;
  minDuration: HTMLInputElement;
  maxDuration: HTMLInputElement;
  lookback: HTMLSelectElement;
  start: HTMLInputElement;
  end: HTMLInputElement;
  custom: HTMLElement;
  limit: HTMLInputElement;
}

export class SearchPage implements Page {
  readonly el: HTMLElement;
  private readonly form: Form;
  private readonly status = h("div", { class: "status", role: "status" });
  private readonly list = h("div", { class: "results", "data-testid": "results" });
  private readonly scatter: Scatter;
  private readonly live: HTMLInputElement;
  private readonly sort: HTMLSelectElement;
  private timer: number | undefined;
  private inflight: AbortController | null = null;
  private results: TraceSummary[] = [];
  private disposed = false;

  constructor(router: Router) {
    this.scatter = new Scatter((id) => router.go(`/trace/${id}`));
    this.form = this.buildForm();
    this.live = h("input", { type: "checkbox", "data-testid": "live", onchange: () => this.setLive() });
    this.sort = h("select", { "aria-label": "Sort", onchange: () => this.sortChanged() });
    for (const [v, label] of SORTS) this.sort.appendChild(h("option", { value: v }, label));
    const toolbar = h(
      "div",
      { class: "toolbar" },
      this.status,
      h("span", { class: "spacer" }),
      h("label", null, "Sort ", this.sort),
      h("label", { class: "live", title: `refresh every ${LIVE_INTERVAL_MS / 1000}s` }, this.live, " Live"),
    );
    this.el = h(
      "div",
      { class: "search-page" },
      h("aside", { class: "sidebar" }, h("h2", null, "Search"), this.form.el),
      h("section", { class: "content" }, toolbar, this.scatter.el, this.list),
    );
    void this.init();
  }

  dispose(): void {
    this.disposed = true;
    window.clearInterval(this.timer);
    this.inflight?.abort();
    this.scatter.destroy();
  }

  private buildForm(): Form {
    const f: Omit<Form, "el"> = {
      service: h("select", { name: "service", required: true, "data-testid": "service" }),
      operation: h("select", { name: "operation", "data-testid": "operation" }),
      tags: h("input", { name: "tags", placeholder: "http.status_code=500 error=true", "data-testid": "tags" }),
      minDuration: h("input", { name: "minDuration", placeholder: "e.g. 1.2s, 100ms" }),
      maxDuration: h("input", { name: "maxDuration", placeholder: "e.g. 5s" }),
      lookback: h("select", { name: "lookback", "data-testid": "lookback" }),
      start: h("input", { type: "datetime-local", name: "start" }),
      end: h("input", { type: "datetime-local", name: "end" }),
      custom: h("div", { class: "custom-range", hidden: true }),
      limit: h("input", { type: "number", name: "limit", min: 1, max: 1500, value: 20 }),
    };
    for (const [v, label] of LOOKBACKS) f.lookback.appendChild(h("option", { value: v }, label));
    f.lookback.value = "1h";
    f.lookback.addEventListener("change", () => (f.custom.hidden = f.lookback.value !== "custom"));
    f.service.addEventListener("change", () => void this.loadOperations(f.service.value, ""));
    f.custom.append(field("Start", f.start), field("End", f.end));
    const el = h(
      "form",
      { class: "search-form", onsubmit: (e: Event) => this.submit(e) },
      field("Service", f.service),
      field("Operation", f.operation),
      field("Tags", f.tags, "space-separated key=value"),
      h("div", { class: "row2" }, field("Min duration", f.minDuration), field("Max duration", f.maxDuration)),
      field("Lookback", f.lookback),
      f.custom,
      field("Limit", f.limit),
      h("button", { type: "submit", class: "primary", "data-testid": "find" }, "Find traces"),
    );
    return { el, ...f };
  }

  private async init(): Promise<void> {
    const q = new URLSearchParams(location.search);
    this.fillForm(q);
    try {
      const services = await api.services();
      const f = this.form;
      f.service.appendChild(h("option", { value: "" }, services.length ? "— choose a service —" : "no services yet"));
      for (const s of services) f.service.appendChild(h("option", { value: s }, plainLabel(s)));
      const wanted = q.get("service") ?? "";
      if (wanted && !services.includes(wanted)) f.service.appendChild(h("option", { value: wanted }, plainLabel(wanted)));
      f.service.value = wanted;
      await this.loadOperations(wanted, q.get("operation") ?? "");
    } catch (e) {
      this.showError(e);
      return;
    }
    if (this.disposed) return;
    if (q.get("live") === "1") this.live.checked = true;
    this.sort.value = SORTS.some(([v]) => v === q.get("sort")) ? q.get("sort")! : "recent";
    if (q.get("service")) await this.run();
    else this.status.textContent = "Choose a service and press Find traces.";
    if (!this.disposed) this.setLive();
  }

  private fillForm(q: URLSearchParams): void {
    const f = this.form;
    f.tags.value = q.get("tags") ?? "";
    f.minDuration.value = q.get("minDuration") ?? "";
    f.maxDuration.value = q.get("maxDuration") ?? "";
    f.limit.value = q.get("limit") ?? "20";
    const lb = q.get("lookback") ?? "1h";
    f.lookback.value = LOOKBACKS.some(([v]) => v === lb) ? lb : "1h";
    f.custom.hidden = f.lookback.value !== "custom";
    const start = Number(q.get("start"));
    const end = Number(q.get("end"));
    if (start) f.start.value = toLocalInput(start);
    if (end) f.end.value = toLocalInput(end);
  }

  private async loadOperations(service: string, selected: string): Promise<void> {
    const sel = this.form.operation;
    clear(sel);
    sel.appendChild(h("option", { value: "" }, "all operations"));
    if (!service) return;
    for (const op of await api.operations(service)) sel.appendChild(h("option", { value: op }, plainLabel(op)));
    if (selected && ![...sel.options].some((o) => o.value === selected)) {
      sel.appendChild(h("option", { value: selected }, plainLabel(selected)));
    }
    sel.value = selected;
  }

  /** Validates the form into the page's query string (which is what searches run from). */
  private formQuery(): URLSearchParams {
    const f = this.form;
    const q = new URLSearchParams();
    if (!f.service.value) throw new Error("choose a service");
    q.set("service", f.service.value);
    if (f.operation.value) q.set("operation", f.operation.value);
    const tags = f.tags.value.trim();
    if (tags) {
      parseTags(tags);
      q.set("tags", tags);
    }
    for (const input of [f.minDuration, f.maxDuration]) {
      const v = input.value.trim();
      if (!v) continue;
      if (!DURATION_RE.test(v)) throw new Error(`${input.name}: want a duration like 100ms or 1.5s`);
      q.set(input.name, v);
    }
    q.set("lookback", f.lookback.value);
    if (f.lookback.value === "custom") {
      const start = fromLocalInput(f.start.value);
      const end = fromLocalInput(f.end.value);
      if (start === null || end === null) throw new Error("custom range: set both start and end");
      if (end <= start) throw new Error("custom range: end must be after start");
      q.set("start", String(start));
      q.set("end", String(end));
    }
    const limit = Math.trunc(Number(f.limit.value));
    if (!(limit >= 1 && limit <= 1500)) throw new Error("limit: want a number from 1 to 1500");
    q.set("limit", String(limit));
    if (this.live.checked) q.set("live", "1");
    if (this.sort.value !== "recent") q.set("sort", this.sort.value);
    return q;
  }

  private submit(e: Event): void {
    e.preventDefault();
    let q: URLSearchParams;
    try {
      q = this.formQuery();
    } catch (err) {
      this.showError(err);
      return;
    }
    history.pushState(null, "", `/search?${q.toString()}`);
    void this.run();
  }

  /** Turns the page's query string into an API query. */
  static apiQuery(q: URLSearchParams): URLSearchParams {
    const out = new URLSearchParams();
    for (const key of ["service", "operation", "minDuration", "maxDuration", "limit"]) {
      const v = q.get(key);
      if (v) out.set(key, v);
    }
    const tags = q.get("tags");
    if (tags) out.set("tags", JSON.stringify(parseTags(tags)));
    const lb = q.get("lookback") ?? "1h";
    if (lb === "custom" && q.get("start") && q.get("end")) {
      out.set("start", q.get("start")!);
      out.set("end", q.get("end")!);
    } else {
      const end = Date.now() * 1000;
      out.set("end", String(end));
      out.set("start", String(end - lookbackMicros(lb === "custom" ? "1h" : lb)));
    }
    return out;
  }

  private async run(background = false): Promise<void> {
    const q = new URLSearchParams(location.search);
    if (!q.get("service")) return;
    if (background && this.inflight) return;
    this.inflight?.abort();
    const ctl = new AbortController();
    this.inflight = ctl;
    if (!background) this.status.textContent = "Searching…";
    try {
      const aq = SearchPage.apiQuery(q);
      const traces = await api.findTraces(aq, ctl.signal);
      this.scatter.window = [Number(aq.get("start")) / 1e6, Number(aq.get("end")) / 1e6];
      const results = traces.map(summarize);
      const classes = await api.traceClasses(
        results.map((r) => r.traceID),
        ctl.signal,
      );
      for (const r of results) r.requestClass = classes.get(r.traceID) ?? r.requestClass;
      this.results = results;
      this.status.classList.remove("error");
      const n = this.results.length;
      this.status.textContent = `${n} trace${n === 1 ? "" : "s"}` + (this.live.checked ? ` · live, updated ${formatTime(Date.now() * 1000).slice(11, 19)}` : "");
      this.scatter.update(this.results);
      this.renderList();
    } catch (e) {
      if (!ctl.signal.aborted) this.showError(e);
    } finally {
      if (this.inflight === ctl) this.inflight = null;
    }
  }

  private setLive(): void {
    window.clearInterval(this.timer);
    this.timer = undefined;
    const q = new URLSearchParams(location.search);
    if (this.live.checked) q.set("live", "1");
    else q.delete("live");
    if (location.pathname !== "/" || q.toString()) history.replaceState(null, "", `${location.pathname === "/" ? "/search" : location.pathname}?${q.toString()}`);
    if (!this.live.checked) return;
    this.timer = window.setInterval(() => {
      if (!document.hidden) void this.run(true);
    }, LIVE_INTERVAL_MS);
  }

  private sortChanged(): void {
    const q = new URLSearchParams(location.search);
    if (this.sort.value === "recent") q.delete("sort");
    else q.set("sort", this.sort.value);
    history.replaceState(null, "", `/search?${q.toString()}`);
    this.renderList();
  }

  /** Renders the result rows, keeping the scroll position and the focused row. */
  private renderList(): void {
    const focusedId = (document.activeElement as HTMLElement | null)?.dataset?.traceId;
    const scrollY = window.scrollY;
    const cmp = SORTS.find(([v]) => v === this.sort.value)?.[2] ?? SORTS[0][2];
    const rows = [...this.results].sort(cmp);
    const maxDur = Math.max(1, ...rows.map((r) => r.duration));
    const hasClass = rows.some((r) => r.requestClass !== null);
    if (!rows.length) {
      this.list.replaceChildren(h("p", { class: "empty" }, "No traces found. Widen the time range or remove filters."));
      return;
    }
    const head = h(
      "div",
      { class: "result head" },
      h("span", null, "Trace"),
      hasClass ? h("span", null, "Class") : null,
      h("span", null, "Duration"),
      h("span", null, "Spans"),
      h("span", null, "Errors"),
      h("span", null, "Started"),
    );
    this.list.classList.toggle("with-class", hasClass);
    this.list.replaceChildren(head, ...rows.map((r) => this.resultRow(r, maxDur, hasClass)));
    if (focusedId) this.list.querySelector<HTMLElement>(`[data-trace-id="${CSS.escape(focusedId)}"]`)?.focus();
    window.scrollTo({ top: scrollY });
  }

  private resultRow(r: TraceSummary, maxDur: number, hasClass: boolean): HTMLElement {
    const bar = h("span", { class: "dur-bar" });
    bar.style.width = `${Math.max(1, (r.duration / maxDur) * 100)}%`;
    const services = h("span", { class: "svc-list" });
    for (const s of r.services.slice(0, 8)) {
      const chip = h("span", { class: "chip" }, plainLabel(s, 40));
      chip.style.borderColor = serviceColor(s);
      services.appendChild(chip);
    }
    if (r.services.length > 8) services.appendChild(h("span", { class: "chip" }, `+${r.services.length - 8}`));
    const swatch = h("span", { class: "swatch" });
    swatch.style.background = serviceColor(r.rootService);
    return h(
      "a",
      { class: "result", href: `/trace/${r.traceID}`, "data-trace-id": r.traceID, "data-testid": "result" },
      h(
        "span",
        { class: "name" },
        h("span", { class: "title" }, swatch, h("b", null, plainLabel(r.rootService, 80)), ": ", plainLabel(r.rootOperation, 120)),
        h("span", { class: "sub" }, h("code", { title: r.traceID }, shortId(r.traceID)), " ", services),
      ),
      hasClass ? h("span", { class: "class" }, r.requestClass ? plainLabel(r.requestClass, 40) : "") : null,
      h("span", { class: "dur" }, formatDuration(r.duration), h("span", { class: "dur-track" }, bar)),
      h("span", { class: "num" }, String(r.spanCount)),
      h("span", { class: r.errorCount ? "num errors" : "num" }, String(r.errorCount)),
      h("span", { class: "time" }, formatTime(r.start), h("span", { class: "sub" }, formatAge(r.start))),
    );
  }

  private showError(e: unknown): void {
    this.status.classList.add("error");
    this.status.textContent = e instanceof Error ? e.message : String(e);
  }
}

/** The first 16 hex digits, or the last 16 of a zero-padded 64-bit ID. */
function shortId(id: string): string {
  return id.length === 32 && id.startsWith("0000000000000000") ? id.slice(16) : id.slice(0, 16);
}

export function lookbackMicros(lb: string): number {
  const m = /^(\d+)([mhd])$/.exec(lb);
  if (!m) return 3600e6;
  const unit = { m: 60e6, h: 3600e6, d: 86400e6 }[m[2] as "m" | "h" | "d"];
  return Number(m[1]) * unit;
}

function field(label: string, input: HTMLElement, hint?: string): HTMLElement {
  return h("label", { class: "field" }, h("span", null, label), input, hint ? h("small", null, hint) : null);
}
