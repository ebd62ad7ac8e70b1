// RED metrics over time for the services page: the time window of a metrics query (step and
// rate window from the lookback), the series of Jaeger's SPM answers (`MetricFamily`) as
// points, each operation's latest point, and one uPlot chart per metric with its series on
// the query's time grid. A window without calls has no point: a rate chart draws it as 0,
// other charts leave a gap.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type * as api from "./api";
import { h } from "./dom";

/** About this many points per series: the step is the lookback over it (at least minstep). */
export const TARGET_POINTS = 120;

/** A metrics query's time window, all in ms (what `/api/metrics/*` takes). */
export interface RedWindow {
  endTs: number;
  lookback: number;
  step: number;
  /** The window each point is computed over, ending at the point. */
  ratePer: number;
}

/**
 * The window of a query over the last `lookbackMs`: step = max(minstep, lookback/120), rounded
 * up to whole minsteps; each point covers the step before it, so the windows tile the range and
 * every call counts in one point.
 */
export function redWindow(lookbackMs: number, minStepMs: number, nowMs: number): RedWindow {
  const min = Math.max(1, minStepMs);
  const step = Math.max(min, Math.ceil(lookbackMs / TARGET_POINTS / min) * min);
  return { endTs: Math.trunc(nowMs), lookback: lookbackMs, step, ratePer: step };
}

/** The times (unix ms) the server computes points at: every step from end - lookback to end. */
export function timeGrid(w: RedWindow): number[] {
  const out: number[] = [];
  for (let t = w.endTs - w.lookback; t <= w.endTs; t += w.step) out.push(t);
  return out;
}

/** A point: unix ms and value. */
export type Point = [number, number];

/** One series of an SPM answer: its operation ("" for the whole service), points oldest first. */
export interface RedSeries {
  operation: string;
  points: Point[];
}

export function seriesOf(family: api.MetricFamily): RedSeries[] {
  return family.metrics.map((m) => ({
    operation: m.labels.find((l) => l.name === "operation")?.value ?? "",
    points: m.metricPoints
      .map((p): Point => [Date.parse(p.timestamp), p.gaugeValue.doubleValue])
      .filter(([t, v]) => Number.isFinite(t) && Number.isFinite(v))
      .sort((a, b) => a[0] - b[0]),
  }));
}

/** The points of a one-service answer (not grouped by operation). */
export function servicePoints(family: api.MetricFamily): Point[] {
  return seriesOf(family).find((s) => s.operation === "")?.points ?? [];
}

export function latest(points: Point[]): Point | null {
  return points.length ? points[points.length - 1] : null;
}

/**
 * Series on one time axis: the times (unix ms: the grid and any point off it), and per series
 * a value at each time, `fill` where it has no point.
 */
export function aligned(grid: number[], series: Point[][], fill: number | null): { times: number[]; columns: (number | null)[][] } {
  const set = new Set(grid);
  for (const s of series) for (const [t] of s) set.add(t);
  const times = [...set].sort((a, b) => a - b);
  const columns = series.map((s) => {
    const byTime = new Map(s);
    return times.map((t) => byTime.get(t) ?? fill);
  });
  return { times, columns };
}

/** What one chart draws. */
export interface ChartSpec {
  /** The chart's `data-metric`. */
  metric: string;
  title: string;
  /** The y axis label. */
  unit: string;
  series: { label: string; stroke: string }[];
  /** Drawn value per API value (100 draws a fraction as %). */
  factor: number;
  /** Formats a value as the API answers it. */
  format: (v: number) => string;
  /** The y axis shows at least 0 to this (drawn units). */
  minTop: number;
  /** A missing point: 0 for a rate (no calls in the window), null (a gap) otherwise. */
  fill: number | null;
}

const HEIGHT = 190;

/** One metric's chart; `update` redraws it for a new answer. */
export class RedChart {
  readonly el: HTMLElement;
  private readonly summary = h("p", { class: "hint", "data-testid": "red-summary" });
  private readonly box = h("div", { class: "red-chart-plot" });
  private plot: uPlot | null = null;
  private range: [number, number] = [0, 1];
  /** Per series the indexes of the server's points (filled ones get no dot). */
  private answered: number[][] = [];

  constructor(private readonly spec: ChartSpec) {
    this.el = h(
      "section",
      { class: "panel red-chart", "data-testid": "red-chart", "data-metric": spec.metric },
      h("h3", null, spec.title),
      this.summary,
      this.box,
    );
  }

  /** Draws `series` (one per spec series) over the window's grid. */
  update(w: RedWindow, series: Point[][]): void {
    this.range = [(w.endTs - w.lookback) / 1000, w.endTs / 1000];
    this.el.dataset.points = series.map((s) => s.length).join(",");
    this.summary.textContent = this.summaryText(series);
    const { times, columns } = aligned(timeGrid(w), series, this.spec.fill);
    this.answered = series.map((s) => {
      const at = new Set(s.map(([t]) => t));
      return times.flatMap((t, i) => (at.has(t) ? [i] : []));
    });
    const data: uPlot.AlignedData = [
      times.map((t) => t / 1000),
      ...columns.map((c) => c.map((v) => (v === null ? null : v * this.spec.factor))),
    ];
    if (this.plot) this.plot.setData(data);
    else this.plot = new uPlot(this.options(), data, this.box);
  }

  /** Fits the chart to its box (after a layout change). */
  resize(): void {
    this.plot?.setSize({ width: this.width(), height: HEIGHT });
  }

  destroy(): void {
    this.plot?.destroy();
    this.plot = null;
  }

  /** Each series' latest point, e.g. "Latest (21:03): p50 10ms · p95 20ms". */
  private summaryText(series: Point[][]): string {
    const last = series.map(latest);
    const at = Math.max(...last.map((p) => p?.[0] ?? -Infinity));
    if (!Number.isFinite(at)) return "No points in this range.";
    const one = this.spec.series.length === 1;
    const values = last.map((p, i) => `${one ? "" : `${this.spec.series[i].label} `}${p ? this.spec.format(p[1]) : "–"}`);
    return `Latest (${clock(at)}): ${values.join(" · ")}`;
  }

  private width(): number {
    return Math.max(280, this.box.clientWidth || 400);
  }

  private options(): uPlot.Options {
    const spec = this.spec;
    return {
      width: this.width(),
      height: HEIGHT,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: () => this.range },
        y: { range: (_u, _min, max) => [0, Math.max(spec.minTop, (max ?? 0) * 1.1)] },
      },
      series: [
        {},
        ...spec.series.map((s) => ({
          label: s.label,
          stroke: s.stroke,
          width: 2,
          spanGaps: false,
          // Filled, so that a lone point (a window with calls between gaps) is seen.
          points: { show: true, size: 6, fill: s.stroke, filter: (_u: uPlot, i: number) => this.answered[i - 1] ?? null },
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : spec.format(v / spec.factor)),
        })),
      ],
      axes: [{ space: 70 }, { label: spec.unit, size: 55 }],
    };
  }
}

/** Local wall-clock time `HH:MM` of unix ms. */
function clock(ms: number): string {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes()].map((n) => String(n).padStart(2, "0")).join(":");
}
