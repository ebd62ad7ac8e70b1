// The trace waterfall: one row per span on a shared time axis, collapsible by parent/child,
// a colour per service. Rows are virtualized: only the rows in view (plus a margin) are in
// the DOM, so traces with many thousands of spans scroll smoothly.

import { h, plainLabel } from "./dom";
import { formatDuration, serviceColor } from "./format";
import { visibleRows, type SpanNode } from "./model";

export const ROW_HEIGHT = 26;
const OVERSCAN = 12;
const INDENT_PX = 14;
const MAX_INDENT_LEVELS = 24;

/** Critical-path segments by span ID, in µs since the epoch. */
export type CriticalPath = Map<string, { start: number; end: number }[]>;

export class Waterfall {
  readonly el: HTMLElement;
  private readonly viewport: HTMLElement;
  private readonly spacer: HTMLElement;
  private readonly ticks: HTMLElement;
  private rows: SpanNode[] = [];
  private readonly collapsed = new Set<string>();
  private selected: string | null = null;
  private critical: CriticalPath = new Map();
  private frame = 0;
  /** The rows in the DOM by span ID. Rows stay in place while they are in view, so state
   * changes (selection, critical path) never swap the element under the pointer. */
  private readonly mounted = new Map<string, { el: HTMLElement; node: SpanNode }>();

  constructor(
    private readonly roots: SpanNode[],
    private readonly start: number,
    private readonly duration: number,
    private readonly onSelect: (node: SpanNode) => void,
  ) {
    this.ticks = h("div", { class: "wf-ticks" });
    this.spacer = h("div", { class: "wf-spacer" });
    this.viewport = h("div", { class: "wf-viewport", "data-testid": "waterfall", tabindex: 0 }, this.spacer);
    this.viewport.addEventListener("scroll", () => this.schedule());
    this.spacer.addEventListener("click", (e) => this.clicked(e));
    this.viewport.addEventListener("keydown", (e) => this.key(e));
    window.addEventListener("resize", this.onResize);
    this.el = h(
      "div",
      { class: "waterfall" },
      h("div", { class: "wf-header" }, h("div", { class: "wf-name" }, "Service & operation"), this.ticks),
      this.viewport,
    );
    this.buildTicks();
    this.refresh();
  }

  private readonly onResize = () => this.schedule();

  dispose(): void {
    window.removeEventListener("resize", this.onResize);
    cancelAnimationFrame(this.frame);
  }

  setCriticalPath(path: CriticalPath): void {
    this.critical = path;
    for (const { el, node } of this.mounted.values()) this.decorate(el, node);
  }

  expandAll(): void {
    this.collapsed.clear();
    this.refresh();
  }

  /** Collapses every span that has children below the given depth. */
  collapseBelow(depth: number): void {
    this.collapsed.clear();
    const walk = (nodes: SpanNode[]) => {
      for (const n of nodes) {
        if (n.children.length && n.depth >= depth) this.collapsed.add(n.span.spanID);
        walk(n.children);
      }
    };
    walk(this.roots);
    this.refresh();
  }

  select(spanId: string): void {
    this.selected = spanId;
    const i = this.rows.findIndex((r) => r.span.spanID === spanId);
    if (i >= 0) {
      this.onSelect(this.rows[i]);
      const top = i * ROW_HEIGHT;
      const vp = this.viewport;
      if (top < vp.scrollTop || top + ROW_HEIGHT > vp.scrollTop + vp.clientHeight) {
        vp.scrollTop = Math.max(0, top - vp.clientHeight / 2);
      }
    }
    for (const [id, { el }] of this.mounted) el.classList.toggle("selected", id === spanId);
    this.schedule();
  }

  private toggle(spanId: string): void {
    if (this.collapsed.has(spanId)) this.collapsed.delete(spanId);
    else this.collapsed.add(spanId);
    this.refresh();
  }

  private refresh(): void {
    this.rows = visibleRows(this.roots, this.collapsed);
    this.spacer.style.height = `${this.rows.length * ROW_HEIGHT}px`;
    this.mounted.clear();
    this.spacer.replaceChildren();
    this.schedule();
  }

  private schedule(): void {
    cancelAnimationFrame(this.frame);
    this.frame = requestAnimationFrame(() => this.render());
  }

  private render(): void {
    const vp = this.viewport;
    const height = vp.clientHeight || 600;
    const first = Math.max(0, Math.floor(vp.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((vp.scrollTop + height) / ROW_HEIGHT) + OVERSCAN);
    const wanted = new Set<string>();
    for (let i = first; i < last; i++) {
      const node = this.rows[i];
      const id = node.span.spanID;
      wanted.add(id);
      if (this.mounted.has(id)) continue;
      const el = this.row(node, i);
      this.mounted.set(id, { el, node });
      this.spacer.appendChild(el);
    }
    for (const [id, { el }] of this.mounted) {
      if (wanted.has(id)) continue;
      el.remove();
      this.mounted.delete(id);
    }
  }

  private clicked(e: Event): void {
    const row = (e.target as Element | null)?.closest?.<HTMLElement>(".wf-row");
    const id = row?.dataset.spanId;
    if (!id) return;
    if ((e.target as Element).closest(".wf-toggle")) this.toggle(id);
    else this.select(id);
  }

  /** Applies the state-dependent classes and critical-path marks to a row. */
  private decorate(el: HTMLElement, node: SpanNode): void {
    const id = node.span.spanID;
    el.classList.toggle("selected", id === this.selected);
    el.classList.toggle("error", node.error);
    el.classList.toggle("critical", this.critical.has(id));
    const timeline = el.querySelector(".wf-timeline");
    if (!timeline) return;
    for (const old of timeline.querySelectorAll(".wf-crit")) old.remove();
    for (const seg of this.critical.get(id) ?? []) {
      const c = h("div", { class: "wf-crit", title: "critical path" });
      c.style.left = `${this.pct(seg.start)}%`;
      c.style.width = `${Math.max(0.15, this.pct(seg.end) - this.pct(seg.start))}%`;
      timeline.appendChild(c);
    }
  }

  private pct(us: number): number {
    return this.duration > 0 ? ((us - this.start) / this.duration) * 100 : 0;
  }

  private row(node: SpanNode, index: number): HTMLElement {
    const s = node.span;
    const color = serviceColor(node.service);
    const hasKids = node.children.length > 0;
    const isCollapsed = this.collapsed.has(s.spanID);
    const toggle = hasKids
      ? h(
          "button",
          {
            class: "wf-toggle",
            type: "button",
            "aria-expanded": String(!isCollapsed),
            title: isCollapsed ? "expand" : "collapse",
          },
          isCollapsed ? `▸ ${node.children.length}` : "▾",
        )
      : h("span", { class: "wf-leaf" });
    const name = h(
      "div",
      { class: "wf-name" },
      toggle,
      h("span", { class: "wf-svc" }, plainLabel(node.service, 60)),
      node.error ? h("span", { class: "wf-err", title: "error" }, "!") : null,
      h("span", { class: "wf-op" }, plainLabel(s.operationName, 160)),
    );
    name.style.paddingLeft = `${Math.min(node.depth, MAX_INDENT_LEVELS) * INDENT_PX + 4}px`;
    name.style.borderLeftColor = color;
    if (node.depth > MAX_INDENT_LEVELS) name.title = `depth ${node.depth}`;

    const left = this.pct(s.startTime);
    const width = Math.max(0.15, this.pct(s.startTime + s.duration) - left);
    const bar = h("div", { class: "wf-bar" });
    bar.style.left = `${left}%`;
    bar.style.width = `${width}%`;
    bar.style.background = color;
    const label = h("span", { class: "wf-dur" }, formatDuration(s.duration));
    if (left + width <= 85) {
      label.style.left = `${left + width + 0.5}%`;
    } else if (left >= 12) {
      label.style.right = `${100 - left + 0.5}%`;
    } else {
      // A bar spanning (nearly) the whole axis carries its label inside.
      label.classList.add("inside");
      label.style.left = `${left + 0.5}%`;
    }
    const timeline = h("div", { class: "wf-timeline" }, bar, label);
    const row = h("div", { class: "wf-row", "data-span-id": s.spanID, "data-testid": "span-row" }, name, timeline);
    row.style.top = `${index * ROW_HEIGHT}px`;
    this.decorate(row, node);
    return row;
  }

  private key(e: KeyboardEvent): void {
    const i = this.rows.findIndex((r) => r.span.spanID === this.selected);
    const move = (to: number) => {
      const r = this.rows[Math.max(0, Math.min(this.rows.length - 1, to))];
      if (r) this.select(r.span.spanID);
      e.preventDefault();
    };
    if (e.key === "ArrowDown") move(i + 1);
    else if (e.key === "ArrowUp") move(i - 1);
    else if ((e.key === "ArrowLeft" || e.key === "ArrowRight" || e.key === "Enter") && this.selected) {
      const node = this.rows[i];
      const wantCollapsed = e.key === "ArrowLeft" || (e.key === "Enter" && !this.collapsed.has(this.selected));
      if (node?.children.length && wantCollapsed !== this.collapsed.has(this.selected)) this.toggle(this.selected);
      e.preventDefault();
    }
  }

  private buildTicks(): void {
    const els: HTMLElement[] = [];
    for (let i = 0; i <= 4; i++) {
      const t = h("span", { class: "wf-tick" }, formatDuration((this.duration * i) / 4));
      t.style.left = `${i * 25}%`;
      if (i === 4) t.classList.add("last");
      els.push(t);
    }
    this.ticks.replaceChildren(...els);
  }
}
