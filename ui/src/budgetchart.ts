// Budget attainment over time on the classes page. The server records each class's observed
// end-to-end quantile, attainment and objective at every budget update step in an in-memory
// ring (`GET /api/v1/budgets/history`); the page loads that history first, so the chart starts
// with data from before it was opened, then appends a sample of `GET /api/v1/budgets` every few
// seconds while it is open, per class in a client-side ring buffer. Each class gets a uPlot
// chart of its observed end-to-end quantile (ms, left axis, with the objective as a dashed
// line) and its attainment (%, right axis).

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

/** Per class the server's recorded history, then the samples taken since the page was opened. */
export class BudgetHistory {
  private readonly byClass = new Map<string, RingBuffer<BudgetSample>>();
  private readonly seeded = new Map<string, number>();

  constructor(private readonly capacity = MAX_SAMPLES) {}

  private ring(klass: string): RingBuffer<BudgetSample> {
    let ring = this.byClass.get(klass);
    if (!ring) {
      ring = new RingBuffer<BudgetSample>(this.capacity);
      this.byClass.set(klass, ring);
    }
    return ring;
  }

  /** Loads the server's history (oldest first); call before the first `record`. */
  seed(history: api.ClassBudgetHistory[]): void {
    for (const c of history) {
      const ring = this.ring(c.class);
      let n = 0;
      for (const p of c.points) {
        const ms = typeof p.t === "number" ? p.t : Date.parse(p.t);
        if (!Number.isFinite(ms) || typeof p.objective_ms !== "number") continue;
        ring.push({ t: ms / 1000, observedMs: finite(p.observed_ms), attainment: finite(p.attainment), objectiveMs: p.objective_ms });
        n++;
      }
      this.seeded.set(c.class, n);
    }
  }

  record(budgets: api.ClassBudget[], nowMs = Date.now()): void {
    for (const b of budgets) {
      this.ring(b.class).push({
        t: nowMs / 1000,
        observedMs: finite(b.observed_ms),
        attainment: finite(b.attainment),
        objectiveMs: b.objective.latency_ms,
      });
    }
  }

  /** How many of a class's samples came from the server's history. */
  fromServer(klass: string): number {
    return this.seeded.get(klass) ?? 0;
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

  /** `fromServer` of the samples (the oldest) came from the server's budget history. */
  update(samples: BudgetSample[], intervalS: number, fromServer = 0): void {
    const n = samples.length;
    const live = Math.max(0, n - fromServer);
    this.el.dataset.samples = String(n);
    this.el.dataset.history = String(fromServer);
    this.note.textContent =
      `Observed ${this.quantileLabel} and attainment over time: ${n} point${n === 1 ? "" : "s"} — ` +
      `${fromServer} from the server's budget history (one per budget update step, kept in server memory only), ` +
      `then ${live} sampled every ${intervalS} s since this page was opened.`;
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
