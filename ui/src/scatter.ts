// Duration-over-time scatter plot of search results (uPlot). Clicking a point opens its trace.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h, plainLabel } from "./dom";
import { formatDuration, formatTime } from "./format";
import type { TraceSummary } from "./model";

export interface ScatterPoint {
  traceID: string;
  /** Client (viewport) coordinates of the point, for tests and tooltips. */
  clientX: number;
  clientY: number;
}

const HIT_RADIUS_PX = 12;

export class Scatter {
  readonly el: HTMLElement;
  private plot: uPlot | null = null;
  private points: TraceSummary[] = [];
  private readonly tip: HTMLElement;
  private readonly onResize = () => this.resize();
  /** The searched time window in seconds, shown when there are no points. */
  window: [number, number] | null = null;

  constructor(private readonly onOpen: (traceID: string) => void) {
    this.tip = h("div", { class: "scatter-tip", hidden: true });
    this.el = h("div", { class: "scatter", "data-testid": "scatter" }, this.tip);
    window.addEventListener("resize", this.onResize);
  }

  /** Redraws the plot with new results (sorted by start time for uPlot). */
  update(results: TraceSummary[]): void {
    this.points = [...results].sort((a, b) => a.start - b.start);
    const xs = this.points.map((p) => p.start / 1e6);
    const ok = this.points.map((p) => (p.errorCount ? null : p.duration / 1000));
    const bad = this.points.map((p) => (p.errorCount ? p.duration / 1000 : null));
    const data: uPlot.AlignedData = [xs, ok, bad];
    if (this.plot) {
      this.plot.setData(data);
      return;
    }
    this.plot = new uPlot(this.options(), data, this.el);
    // Test hook: browser tests read point positions to click one.
    (window as unknown as { __meshtraceScatter?: () => ScatterPoint[] }).__meshtraceScatter = () =>
      this.positions();
    this.plot.over.addEventListener("click", () => this.click());
    this.plot.over.addEventListener("mousemove", () => this.hover());
    this.plot.over.addEventListener("mouseleave", () => (this.tip.hidden = true));
  }

  /** Client coordinates of every plotted point. */
  positions(): ScatterPoint[] {
    const u = this.plot;
    if (!u) return [];
    const rect = u.over.getBoundingClientRect();
    return this.points.map((p) => ({
      traceID: p.traceID,
      clientX: rect.left + u.valToPos(p.start / 1e6, "x"),
      clientY: rect.top + u.valToPos(p.duration / 1000, "y"),
    }));
  }

  destroy(): void {
    window.removeEventListener("resize", this.onResize);
    this.plot?.destroy();
    this.plot = null;
  }

  private options(): uPlot.Options {
    const point = (fill: string): uPlot.Series => ({
      stroke: fill,
      fill,
      paths: () => null,
      points: { show: true, size: 8, fill, stroke: fill, width: 1 },
    });
    return {
      width: this.width(),
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      scales: { x: { time: true, range: () => this.xRange() }, y: { auto: true, range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [
        { stroke: "#555", grid: { stroke: "#eee" } },
        {
          stroke: "#555",
          grid: { stroke: "#eee" },
          size: 70,
          values: (_u, vals) => vals.map((v) => formatDuration(v * 1000)),
        },
      ],
      series: [{}, { label: "ok", ...point("#4e79a7") }, { label: "error", ...point("#e15759") }],
    };
  }

  /** The points' time span with a margin, at least a minute wide. */
  private xRange(): [number, number] {
    if (!this.points.length) {
      const now = Date.now() / 1000;
      return this.window ?? [now - 3600, now];
    }
    const lo = this.points[0].start / 1e6;
    const hi = this.points[this.points.length - 1].start / 1e6;
    const mid = (lo + hi) / 2;
    const half = Math.max(hi - lo, 60) * 0.55;
    return [mid - half, mid + half];
  }

  private width(): number {
    return Math.max(300, (this.el.parentElement?.clientWidth ?? 800) - 4);
  }

  private resize(): void {
    this.plot?.setSize({ width: this.width(), height: 180 });
  }

  private nearest(): TraceSummary | null {
    const u = this.plot;
    if (!u || u.cursor.left === undefined || u.cursor.left < 0) return null;
    const cx = u.cursor.left;
    const cy = u.cursor.top ?? -1;
    let best: TraceSummary | null = null;
    let bestDist = HIT_RADIUS_PX;
    for (const p of this.points) {
      const dx = u.valToPos(p.start / 1e6, "x") - cx;
      const dy = u.valToPos(p.duration / 1000, "y") - cy;
      const d = Math.hypot(dx, dy);
      if (d <= bestDist) {
        bestDist = d;
        best = p;
      }
    }
    return best;
  }

  private click(): void {
    const p = this.nearest();
    if (p) this.onOpen(p.traceID);
  }

  private hover(): void {
    const p = this.nearest();
    const u = this.plot;
    this.el.classList.toggle("pointing", p !== null);
    if (!p || !u) {
      this.tip.hidden = true;
      return;
    }
    this.tip.hidden = false;
    this.tip.textContent = `${plainLabel(p.rootService, 60)}: ${plainLabel(p.rootOperation, 80)} — ${formatDuration(p.duration)}, ${p.spanCount} spans — ${formatTime(p.start)}`;
    const left = u.valToPos(p.start / 1e6, "x") + u.over.offsetLeft + 10;
    this.tip.style.left = `${Math.min(left, this.el.clientWidth - 320)}px`;
    this.tip.style.top = `${u.valToPos(p.duration / 1000, "y") + u.over.offsetTop + 10}px`;
  }
}
