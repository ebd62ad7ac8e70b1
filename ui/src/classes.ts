// The classes page (`/classes`): the class rules in the order they apply, the traces per class
// over the last hour, the learned (caller, callee, operation) → class mapping, and — when the
// budgets API answers — each class's objective, attainment and per-hop budgets with the hops
// at risk marked. Each class's attainment and observed quantile are charted over time
// (`budgetchart.ts`): first the server's budget history (recorded at every update step, so
// the chart has data from before the page was opened), then a sample of the budgets API
// every few seconds while the page is open.
// Class, service and operation names are untrusted: text nodes only.

import * as api from "./api";
import { h, plainLabel, type Child } from "./dom";
import { formatMs, formatPercent, formatRate } from "./graph";
import type { Page, Router } from "./main";
import { BudgetChart, BudgetHistory } from "./budgetchart";
import { LIVE_INTERVAL_MS } from "./search";

/** A hop is at risk when over budget or within this share of its budget. */
export const AT_RISK_SLACK_SHARE = 0.1;

export function hopAtRisk(hop: api.HopBudget): boolean {
  if (typeof hop.at_risk === "boolean") return hop.at_risk;
  return hop.slack_ms < AT_RISK_SLACK_SHARE * hop.budget_ms;
}

export class ClassesPage implements Page {
  readonly el: HTMLElement;
  private readonly status = h("div", { class: "status", role: "status" }, "Loading…");
  private readonly rules = h("section", { class: "panel", "data-testid": "class-rules" });
  private readonly counts = h("section", { class: "panel", "data-testid": "class-counts" });
  private readonly mapping = h("section", { class: "panel", "data-testid": "class-mapping" });
  private readonly budgets = h("div", { "data-testid": "class-budgets" });
  private readonly history = new BudgetHistory();
  private readonly charts = new Map<string, BudgetChart>();
  private timer: number | undefined;
  private sampling = false;
  private disposed = false;

  constructor(_router: Router) {
    this.el = h(
      "div",
      { class: "classes-page" },
      h("div", { class: "page-head" }, h("h2", null, "Classes"), this.status),
      this.budgets,
      this.counts,
      this.rules,
      this.mapping,
    );
    void this.load();
    this.timer = window.setInterval(() => {
      if (!document.hidden) void this.sample();
    }, LIVE_INTERVAL_MS);
  }

  dispose(): void {
    this.disposed = true;
    window.clearInterval(this.timer);
    for (const c of this.charts.values()) c.destroy();
    this.charts.clear();
  }

  /** Takes one budgets sample (the charts' data) and re-renders the budget cards. */
  private async sample(): Promise<void> {
    if (this.sampling) return;
    this.sampling = true;
    try {
      const budgets = await api.budgets();
      if (!this.disposed) this.showBudgets(budgets);
    } catch {
      // The next sample retries; the status line shows errors of the full load.
    } finally {
      this.sampling = false;
    }
  }

  private async load(): Promise<void> {
    const end = Date.now() * 1000;
    const [rules, mapping, graph, budgets, history] = await Promise.allSettled([
      api.classRules(),
      api.classMapping(),
      api.graph("", end - 3600e6, end),
      api.budgets(),
      api.budgetHistory(),
    ]);
    if (this.disposed) return;
    // A failed history load leaves the chart to start empty.
    if (history.status === "fulfilled") this.history.seed(history.value);
    const failed = [rules, mapping, graph, budgets].filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    this.status.classList.toggle("error", failed.length > 0);
    this.status.textContent = failed.length ? failed.map((f) => errText(f.reason)).join("; ") : "";
    if (rules.status === "fulfilled") this.showRules(rules.value);
    if (mapping.status === "fulfilled") this.showMapping(mapping.value);
    if (graph.status === "fulfilled") this.showCounts(graph.value.classes);
    if (budgets.status === "fulfilled") this.showBudgets(budgets.value);
  }

  private showRules(rules: api.ClassRule[]): void {
    const head = ["#", "Class", "Service", "Route prefix", "Operation", "Attribute", "Source"];
    const rows = rules.map((r, i) => [
      String(i + 1),
      classLink(r.class),
      opt(r.service),
      opt(r.route_prefix),
      opt(r.operation),
      r.attribute ? `${plainLabel(r.attribute[0], 80)} = ${plainLabel(r.attribute[1], 80)}` : any(),
      r.source ?? "",
    ]);
    this.rules.replaceChildren(
      h("h3", null, "Rules"),
      h(
        "p",
        { class: "hint" },
        "A trace's class comes from its entry span: an explicit mesh.class or request.class attribute (or baggage) first, else the first rule below that matches, else ",
        h("code", null, "default"),
        ".",
      ),
      rows.length ? table(head, rows, "class-rule") : h("p", { class: "empty" }, "No rules configured: traces without an explicit class are ", h("code", null, "default"), "."),
    );
  }

  private showCounts(classes: api.GraphClass[]): void {
    const rows = [...classes].sort((a, b) => b.traces - a.traces).map((c) => [classLink(c.class), String(c.traces)]);
    this.counts.replaceChildren(
      h("h3", null, "Traces per class, last hour"),
      rows.length ? table(["Class", "Complete traces"], rows, "class-count") : h("p", { class: "empty" }, "No complete traces in the last hour."),
    );
  }

  private showMapping(entries: api.MappingEntry[]): void {
    const sorted = [...entries].sort(
      (a, b) => a.caller.localeCompare(b.caller) || a.callee.localeCompare(b.callee) || a.operation.localeCompare(b.operation) || b.count - a.count,
    );
    const rows = sorted.map((m) => [
      plainLabel(m.caller, 80),
      plainLabel(m.callee, 80),
      plainLabel(m.operation, 120),
      classLink(m.class),
      String(m.count),
      shareBar(m.share),
    ]);
    this.mapping.replaceChildren(
      h("h3", null, "Learned mapping"),
      h("p", { class: "hint" }, "Which classes each call signature carries, learned from complete traces (each trace counts once per signature)."),
      rows.length ? table(["Caller", "Callee", "Operation", "Class", "Traces", "Share"], rows, "mapping-row") : h("p", { class: "empty" }, "Nothing learned yet."),
    );
  }

  private showBudgets(budgets: api.ClassBudget[]): void {
    this.history.record(budgets);
    for (const [klass, chart] of this.charts) {
      if (budgets.some((b) => b.class === klass)) continue;
      chart.destroy();
      this.charts.delete(klass);
    }
    const width = Math.max(320, Math.min(1200, (this.el.clientWidth || 1000) - 90));
    const cards = budgets.map((b) => {
      let chart = this.charts.get(b.class);
      if (!chart) {
        chart = new BudgetChart(quantileLabel(b.objective.quantile), width);
        this.charts.set(b.class, chart);
      }
      const card = budgetCard(b);
      card.appendChild(chart.el);
      chart.update(this.history.samples(b.class), LIVE_INTERVAL_MS / 1000, this.history.fromServer(b.class));
      return card;
    });
    this.budgets.replaceChildren(
      h(
        "section",
        { class: "panel" },
        h("h3", null, "Budgets"),
        cards.length ? h("div", { class: "budget-cards" }, ...cards) : h("p", { class: "empty" }, "No class has an objective."),
      ),
    );
  }
}

function budgetCard(b: api.ClassBudget): HTMLElement {
  const o = b.objective;
  const q = quantileLabel(o.quantile);
  const missing = b.missing;
  const rows = b.hops.map((hop) => {
    const risk = hopAtRisk(hop);
    const name = h("span", { class: "hop-name" }, h("b", null, plainLabel(hop.service, 60)), " ", plainLabel(hop.operation, 80));
    name.style.paddingLeft = `${Math.min(10, hop.depth ?? 0) * 14}px`;
    return {
      risk,
      cells: [
        h("span", null, name, hop.parallel ? h("span", { class: "tag" }, "parallel") : null),
        formatMs(hop.budget_ms),
        formatMs(hop.observed_ms),
        h("span", { class: hop.slack_ms < 0 ? "neg" : "" }, formatMs(hop.slack_ms)),
        hop.share === undefined ? "–" : formatPercent(hop.share),
        hop.rate_per_s === undefined ? "–" : formatRate(hop.rate_per_s),
        risk ? h("span", { class: "risk", "data-testid": "hop-at-risk" }, "at risk") : "",
      ] as Child[],
    };
  });
  const t = table(["Hop", "Budget", "Observed", "Slack", "Share", "Rate", ""], rows.map((r) => r.cells), "budget-hop");
  rows.forEach((r, i) => t.tBodies[0].rows[i].classList.toggle("at-risk", r.risk));
  return h(
    "div",
    { class: `budget-card${missing ? " missing" : ""}`, "data-testid": "budget-card", "data-class": b.class },
    h("h4", null, classLink(b.class), missing ? h("span", { class: "risk" }, "objective missed") : null),
    h(
      "dl",
      { class: "facts" },
      h("dt", null, "Objective"),
      h(
        "dd",
        null,
        `${q} ≤ ${formatMs(o.latency_ms)}` +
          (o.importance !== undefined ? ` · importance ${o.importance}` : "") +
          (b.source ? ` · from ${b.source}` : ""),
      ),
      h("dt", null, `Observed ${q}`),
      h("dd", null, formatMs(b.observed_ms)),
      h("dt", null, "Attainment"),
      h("dd", null, b.attainment == null ? "–" : formatPercent(b.attainment)),
      h("dt", null, "Samples"),
      h("dd", null, String(b.samples)),
    ),
    b.hops.length ? t : h("p", { class: "none" }, "No hops observed yet."),
  );
}

function quantileLabel(quantile: number): string {
  return `p${Number((quantile * 100).toFixed(2))}`;
}

function table(head: string[], rows: Child[][], rowTestId: string): HTMLTableElement {
  return h(
    "table",
    { class: "grid" },
    h("thead", null, h("tr", null, ...head.map((c) => h("th", null, c)))),
    h("tbody", null, ...rows.map((r) => h("tr", { "data-testid": rowTestId }, ...r.map((c) => h("td", null, c))))),
  );
}

function classLink(klass: string): HTMLElement {
  return h("a", { href: `/graph?class=${encodeURIComponent(klass)}`, class: "class-name" }, plainLabel(klass, 80) || "(empty)");
}

function opt(v: string | null | undefined): Child {
  return v ? plainLabel(v, 120) : any();
}

function any(): HTMLElement {
  return h("span", { class: "any" }, "any");
}

function shareBar(share: number): HTMLElement {
  const bar = h("span", { class: "share-bar" });
  bar.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
  return h("span", { class: "share" }, h("span", { class: "share-track" }, bar), formatPercent(share));
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
