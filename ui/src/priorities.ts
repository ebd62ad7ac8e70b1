// The priorities page (`/priorities?live=1`): per service its current assignment set (class →
// priority level, timeout, how proxies match the class, why), the proxies that poll or watch
// with whether they hold the current version, each service's history of versions with the
// reasons, and the operator overrides (editable: set a class's level, remove one, clear all).
// Class, service and node names are untrusted: text nodes only.

import * as api from "./api";
import { h, plainLabel, type Child } from "./dom";
import { formatTime } from "./format";
import { formatMs, formatPercent } from "./graph";
import type { Page, Router } from "./main";
import { LIVE_INTERVAL_MS } from "./search";

/** After saving overrides, the page also reloads this long after (the next budget step). */
const FOLLOW_UP_MS = 1500;

interface ServiceState {
  service: string;
  versions: api.PriorityVersion[];
}

export class PrioritiesPage implements Page {
  readonly el: HTMLElement;
  private readonly status = h("div", { class: "status", role: "status" }, "Loading…");
  private readonly live = h("input", { type: "checkbox", "data-testid": "priorities-live", onchange: () => this.setLive() });
  private readonly overridesBox = h("div", { "data-testid": "overrides-list" });
  private readonly formStatus = h("span", { class: "status", role: "status", "data-testid": "override-status" });
  private readonly classInput = h("input", { list: "priority-classes", required: true, placeholder: "class", "aria-label": "Class", "data-testid": "override-class", spellcheck: "false" });
  private readonly levelInput = h("input", { type: "number", min: 0, step: 1, required: true, placeholder: "0", "aria-label": "Level", "data-testid": "override-level" });
  private readonly classList = h("datalist", { id: "priority-classes" });
  private readonly proxiesBox = h("section", { class: "panel", "data-testid": "proxies" });
  private readonly servicesBox = h("div", { class: "priority-services", "data-testid": "priority-services" });
  private overrides: Record<string, number> = {};
  private readonly openHistory = new Set<string>();
  private timer: number | undefined;
  private followUp: number | undefined;
  private inflight: AbortController | null = null;
  private disposed = false;

  constructor(_router: Router) {
    const form = h(
      "form",
      { class: "override-form", onsubmit: (e: Event) => this.submit(e) },
      h("label", { class: "field" }, h("span", null, "Class"), this.classInput),
      h("label", { class: "field" }, h("span", null, "Level (0 highest)"), this.levelInput),
      h("button", { type: "submit", class: "primary", "data-testid": "override-set" }, "Set override"),
      h("button", { type: "button", "data-testid": "override-clear", onclick: () => void this.save({}) }, "Clear all"),
      this.formStatus,
      this.classList,
    );
    this.el = h(
      "div",
      { class: "classes-page priorities-page" },
      h(
        "div",
        { class: "page-head" },
        h("h2", null, "Priorities"),
        this.status,
        h("span", { class: "spacer" }),
        h("label", { class: "live", title: `refresh every ${LIVE_INTERVAL_MS / 1000}s` }, this.live, " Live"),
      ),
      h(
        "section",
        { class: "panel", "data-testid": "overrides" },
        h("h3", null, "Operator overrides"),
        h("p", { class: "hint" }, "A class pinned here gets this level at every service, at once, with the reason “operator override”. Saving replaces the whole set."),
        this.overridesBox,
        form,
      ),
      this.servicesBox,
      this.proxiesBox,
    );
    this.live.checked = new URLSearchParams(location.search).get("live") === "1";
    this.setLive();
    void this.load(false);
  }

  dispose(): void {
    this.disposed = true;
    window.clearInterval(this.timer);
    window.clearTimeout(this.followUp);
    this.inflight?.abort();
  }

  private setLive(): void {
    window.clearInterval(this.timer);
    this.timer = undefined;
    if (this.disposed) return;
    const q = new URLSearchParams(location.search);
    if (this.live.checked) q.set("live", "1");
    else q.delete("live");
    const qs = q.toString();
    history.replaceState(null, "", `/priorities${qs ? `?${qs}` : ""}`);
    if (!this.live.checked) return;
    this.timer = window.setInterval(() => {
      if (!document.hidden) void this.load(true);
    }, LIVE_INTERVAL_MS);
  }

  private async load(background: boolean): Promise<void> {
    if (background && this.inflight) return;
    this.inflight?.abort();
    const ctl = new AbortController();
    this.inflight = ctl;
    try {
      const [services, proxies, overrides] = await Promise.all([
        api.services().catch(() => [] as string[]),
        api.proxies(ctl.signal),
        api.priorityOverrides(ctl.signal),
      ]);
      const names = [...new Set([...services, ...proxies.map((p) => p.service)])].sort();
      const states = await Promise.all(
        names.map(async (service) => ({ service, versions: await api.priorityHistory(service, ctl.signal) })),
      );
      if (this.disposed || ctl.signal.aborted) return;
      this.overrides = overrides;
      this.showOverrides(states);
      this.showServices(states);
      this.showProxies(proxies, states);
      const published = states.filter((s) => s.versions.length).length;
      this.status.classList.remove("error");
      this.status.textContent =
        `${published} service${published === 1 ? "" : "s"} with assignments, ${proxies.length} prox${proxies.length === 1 ? "y" : "ies"}` +
        (this.live.checked ? ` · live, updated ${formatTime(Date.now() * 1000).slice(11, 19)}` : "");
    } catch (e) {
      if (!ctl.signal.aborted) this.showError(this.status, e);
    } finally {
      if (this.inflight === ctl) this.inflight = null;
    }
  }

  private showOverrides(states: ServiceState[]): void {
    const entries = Object.entries(this.overrides).sort(([a], [b]) => a.localeCompare(b));
    const rows = entries.map(([klass, level]) => [
      h("span", { class: "class-name" }, plainLabel(klass, 80) || "(empty)"),
      String(level),
      h("button", { type: "button", class: "link", "data-testid": "override-remove", onclick: () => void this.remove(klass) }, "remove"),
    ]);
    this.overridesBox.replaceChildren(
      rows.length ? table(["Class", "Level", ""], rows, "override-row") : h("p", { class: "empty" }, "No overrides: levels come from the budgets."),
    );
    const known = new Set<string>(Object.keys(this.overrides));
    for (const s of states) for (const a of s.versions.at(-1)?.assignments ?? []) known.add(a.class);
    this.classList.replaceChildren(...[...known].sort().map((c) => h("option", { value: c })));
  }

  private showServices(states: ServiceState[]): void {
    for (const d of this.servicesBox.querySelectorAll<HTMLDetailsElement>("details[data-service]")) {
      if (d.open) this.openHistory.add(d.dataset.service ?? "");
      else this.openHistory.delete(d.dataset.service ?? "");
    }
    const published = states.filter((s) => s.versions.length);
    const idle = states.length - published.length;
    const parts: HTMLElement[] = published.map((s) => this.serviceCard(s));
    if (!published.length) {
      parts.push(h("section", { class: "panel" }, h("p", { class: "empty" }, "No assignments published yet: they appear once a class with an objective has traffic.")));
    }
    if (idle) parts.push(h("p", { class: "hint" }, `${idle} other service${idle === 1 ? " has" : "s have"} no assignments.`));
    this.servicesBox.replaceChildren(...parts);
  }

  private serviceCard(s: ServiceState): HTMLElement {
    const current = s.versions[s.versions.length - 1];
    const sorted = [...(current.assignments ?? [])].sort((a, b) => a.priority - b.priority || a.class.localeCompare(b.class));
    const rows = sorted.map((a) => [
      h("span", { class: "class-name" }, plainLabel(a.class, 80) || "(empty)", this.overrides[a.class] !== undefined ? h("span", { class: "tag" }, "override") : null),
      h("span", { class: `level level-${Math.min(a.priority, 7)}` }, String(a.priority)),
      a.timeout_ms > 0 ? formatMs(a.timeout_ms) : "none",
      matchText(a.match),
      plainLabel(a.reason, 300),
    ]);
    const t = table(["Class", "Priority", "Timeout", "Match", "Reason"], rows, "assignment");
    t.classList.add("assignments");
    sorted.forEach((a, i) => (t.tBodies[0].rows[i].dataset.class = a.class));
    const history = [...s.versions].reverse().map((v) => [
      `v${v.version}`,
      formatIso(v.generated_at),
      plainLabel(v.reason, 400),
      (v.assignments ?? []).map((a) => `${plainLabel(a.class, 40)}:${a.priority}`).join(" "),
    ]);
    const details = h(
      "details",
      { "data-service": s.service, open: this.openHistory.has(s.service) },
      h("summary", null, `History (${s.versions.length} version${s.versions.length === 1 ? "" : "s"})`),
      table(["Version", "Generated", "Why", "Levels"], history, "history-row"),
    );
    return h(
      "section",
      { class: "panel", "data-testid": "priority-service", "data-service": s.service },
      h(
        "h3",
        null,
        plainLabel(s.service, 120),
        " ",
        h("span", { class: "badge", "data-testid": "service-version" }, `version ${current.version}`),
        h("span", { class: "hint-inline" }, `generated ${formatIso(current.generated_at)}`),
      ),
      sorted.length ? t : h("p", { class: "empty" }, "Empty set: no class is prioritized here."),
      details,
    );
  }

  private showProxies(proxies: api.ProxyInfo[], states: ServiceState[]): void {
    const currentOf = new Map(states.map((s) => [s.service, s.versions.at(-1)?.version ?? 0]));
    const sorted = [...proxies].sort((a, b) => a.service.localeCompare(b.service) || a.node.localeCompare(b.node));
    const rows = sorted.map((p) => {
      const cur = currentOf.get(p.service) ?? 0;
      const ok = p.version >= cur;
      return [
        plainLabel(p.service, 80),
        plainLabel(p.node, 80),
        p.via,
        formatIso(p.last_seen),
        `v${p.version}`,
        h("span", { class: ok ? "ok" : "risk", "data-testid": "proxy-current" }, ok ? "current" : `behind (current v${cur})`),
      ] as Child[];
    });
    this.proxiesBox.replaceChildren(
      h("h3", null, "Proxies"),
      h("p", { class: "hint" }, "Sidecars that long-poll GET /api/v1/priorities or watch over gRPC, with the version last sent to them."),
      rows.length
        ? table(["Service", "Node", "Via", "Last seen", "Holds", ""], rows, "proxy-row")
        : h("p", { class: "empty" }, "No proxy has asked for its priorities yet."),
    );
  }

  private submit(e: Event): void {
    e.preventDefault();
    const klass = this.classInput.value.trim();
    const level = Number(this.levelInput.value);
    if (!klass) return this.showError(this.formStatus, new Error("class: required"));
    if (this.levelInput.value.trim() === "" || !Number.isInteger(level) || level < 0) {
      return this.showError(this.formStatus, new Error("level: want an integer, 0 the highest"));
    }
    void this.save({ ...this.overrides, [klass]: level });
  }

  private remove(klass: string): Promise<void> {
    const next = { ...this.overrides };
    delete next[klass];
    return this.save(next);
  }

  private async save(next: Record<string, number>): Promise<void> {
    this.formStatus.classList.remove("error");
    this.formStatus.textContent = "Saving…";
    try {
      this.overrides = await api.setPriorityOverrides(next);
      if (this.disposed) return;
      const n = Object.keys(this.overrides).length;
      this.formStatus.textContent = n ? `Saved ${n} override${n === 1 ? "" : "s"}.` : "Overrides cleared.";
      this.classInput.value = "";
      this.levelInput.value = "";
      await this.load(false);
      window.clearTimeout(this.followUp);
      this.followUp = window.setTimeout(() => void this.load(true), FOLLOW_UP_MS);
    } catch (err) {
      this.showError(this.formStatus, err);
    }
  }

  private showError(el: HTMLElement, e: unknown): void {
    el.classList.add("error");
    el.textContent = e instanceof Error ? e.message : String(e);
  }
}

/** How proxies recognize the class: header, baggage, learned call signatures. */
function matchText(m: api.PriorityMatch | null | undefined): Child {
  const parts: Child[] = [];
  if (m?.header) parts.push(h("div", null, "header ", h("code", null, `${plainLabel(m.header.name, 60)}: ${plainLabel(m.header.value, 80)}`)));
  if (m?.baggage) parts.push(h("div", null, "baggage ", h("code", null, `${plainLabel(m.baggage.key, 60)}=${plainLabel(m.baggage.value, 80)}`)));
  const sigs = m?.signatures ?? [];
  for (const s of sigs.slice(0, 4)) {
    parts.push(h("div", null, `from ${plainLabel(s.caller, 60)}: ${plainLabel(s.operation, 80)} (${formatPercent(s.share)})`));
  }
  if (sigs.length > 4) parts.push(h("div", { class: "hint" }, `+${sigs.length - 4} more signatures`));
  return parts.length ? h("div", { class: "match" }, ...parts) : h("span", { class: "any" }, "none");
}

function formatIso(iso: string): string {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? plainLabel(iso, 40) : formatTime(ms * 1000);
}

function table(head: string[], rows: Child[][], rowTestId: string): HTMLTableElement {
  return h(
    "table",
    { class: "grid" },
    h("thead", null, h("tr", null, ...head.map((c) => h("th", null, c)))),
    h("tbody", null, ...rows.map((r) => h("tr", { "data-testid": rowTestId }, ...r.map((c) => h("td", null, c))))),
  );
}
