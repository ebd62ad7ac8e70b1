// Budget attainment over time on the classes page. The server keeps no history of budgets, so
// the page samples `GET /api/v1/budgets` while it is open and keeps the samples per class in a
// client-side ring buffer; each class gets a uPlot chart of its observed end-to-end quantile
// (ms, left axis, with the objective as a dashed line) and its attainment (%, right axis).

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type * as api from "./api";
import { h } from "./dom";

/** Samples kept per class (an hour at one sample every 5 s). */
export const MAX_SAMPLES = 720;

/** A fixed-capacity FIFO: pushing onto a full buffer drops the oldest item. */
export class RingBuffer<T> {
  private items: T[] = [];
  private start = 0;

  constructor(readonly capacity: number) {}

  push(item: T): void {
    if (this.items.length < this.capacity) {
      this.items.push(item);
      return;
    }
    this.items[this.start] = item;
    this.start = (this.start + 1) % this.capacity;
  }

  get length(): number {
    return this.items.length;
  }

  /** Oldest first. */
  toArray(): T[] {
    return [...this.items.slice(this.start), ...this.items.slice(0, this.start)];
  }
}

export interface BudgetSample {
  /** Unix seconds. */
  t: number;
  observedMs: number | null;
  attainment: number | null;
  objectiveMs: number;
}

/** Per class the samples taken since the page was opened. */
export class BudgetHistory {
  private readonly byClass = new Map<string, RingBuffer<BudgetSample>>();

  constructor(private readonly capacity = MAX_SAMPLES) {}

  record(budgets: api.ClassBudget[], nowMs = Date.now()): void {
    for (const b of budgets) {
      let ring = this.byClass.get(b.class);
      if (!ring) {
        ring = new RingBuffer<BudgetSample>(this.capacity);
        this.byClass.set(b.class, ring);
      }
      ring.push({
        t: nowMs / 1000,
        observedMs: finite(b.observed_ms),
        attainment: finite(b.attainment),
        objectiveMs: b.objective.latency_ms,
      });
    }
  }

  samples(klass: string): BudgetSample[] {
    return this.byClass.get(klass)?.toArray() ?? [];
  }
}

/** Local wall-clock time `HH:MM:SS` of Unix seconds. */
function clock(t: number): string {
  const d = new Date(t * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

function finite(v: number | null | undefined): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** One class's chart; its element can be moved between re-rendered cards. */
export class BudgetChart {
  readonly el: HTMLElement;
  private readonly note = h("p", { class: "hint" });
  private readonly box = h("div", { class: "budget-chart-plot" });
  private plot: uPlot | null = null;

  constructor(
    private readonly quantileLabel: string,
    private readonly width: number,
  ) {
    this.el = h("div", { class: "budget-chart", "data-testid": "budget-chart" }, this.note, this.box);
  }

  update(samples: BudgetSample[], intervalS: number): void {
    const n = samples.length;
    this.el.dataset.samples = String(n);
    this.note.textContent =
      `Observed ${this.quantileLabel} and attainment over time: ${n} sample${n === 1 ? "" : "s"} taken every ${intervalS} s since this page was opened ` +
      "(the server keeps no budget history).";
    const data: uPlot.AlignedData = [
      samples.map((s) => s.t),
      samples.map((s) => s.observedMs),
      samples.map((s) => s.objectiveMs),
      samples.map((s) => (s.attainment === null ? null : s.attainment * 100)),
    ];
    if (this.plot) this.plot.setData(data);
    else this.plot = new uPlot(this.options(), data, this.box);
  }

  destroy(): void {
    this.plot?.destroy();
    this.plot = null;
  }

  private options(): uPlot.Options {
    return {
      width: this.width,
      height: 170,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, ms: { auto: true, range: (_u, _min, max) => [0, Math.max(1, max) * 1.1] }, pct: { range: [0, 100] } },
      series: [
        {},
        { label: `Observed ${this.quantileLabel}`, scale: "ms", stroke: "#3461c1", width: 2, points: { show: true, size: 4 }, value: (_u, v) => (v === null ? "–" : `${v.toFixed(1)} ms`) },
        { label: "Objective", scale: "ms", stroke: "#c62828", width: 1, dash: [6, 4], points: { show: false }, value: (_u, v) => (v === null ? "–" : `${v} ms`) },
        { label: "Attainment", scale: "pct", stroke: "#2e7d32", width: 2, points: { show: true, size: 4 }, value: (_u, v) => (v === null ? "–" : `${v.toFixed(1)}%`) },
      ],
      axes: [
        { space: 90, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600], values: (_u, splits) => splits.map((t) => clock(t)) },
        { scale: "ms", label: "ms", size: 50 },
        { scale: "pct", side: 1, label: "%", size: 45, grid: { show: false } },
      ],
    };
  }
}
