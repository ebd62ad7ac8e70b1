// Entry point of the meshtrace dashboard: top bar, client-side routing between pages, and the
// token prompt in place of the page when the server asks for a bearer token (signin.ts).

import "./style.css";
import { TENANT_RE, forgetToken, setUnauthorizedHandler, storeTenant, storedTenant, storedToken } from "./auth";
import { h } from "./dom";
import { SearchPage } from "./search";
import { TracePage } from "./trace";
import { GraphPage } from "./graph";
import { ClassesPage } from "./classes";
import { PrioritiesPage } from "./priorities";
import { ServicesPage } from "./services";
import { SignInPage } from "./signin";

export interface Page {
  el: HTMLElement;
  dispose(): void;
}

export interface Router {
  go(path: string): void;
}

const TRACE_ID_RE = /^[0-9a-fA-F]{1,32}$/;

class App implements Router {
  private page: Page | null = null;
  private readonly forget = h(
    "button",
    { type: "button", class: "forget", title: "Remove the access token stored in this browser", "data-testid": "forget-token", onclick: () => this.forgetToken() },
    "Forget token",
  );

  constructor(
    private readonly root: HTMLElement,
    private readonly nav: HTMLElement,
  ) {
    window.addEventListener("popstate", () => this.route());
    document.addEventListener("click", (e) => this.interceptLink(e));
    setUnauthorizedHandler((message, refused) => this.askForToken(message, refused));
    this.buildNav();
  }

  go(path: string): void {
    history.pushState(null, "", path);
    this.route();
    window.scrollTo({ top: 0 });
  }

  route(): void {
    this.page?.dispose();
    this.forget.hidden = !storedToken();
    const path = location.pathname.replace(/\/+$/, "") || "/";
    let page: Page;
    const trace = /^\/trace\/([^/]+)$/.exec(path);
    if (path === "/" || path === "/search") page = new SearchPage(this);
    else if (trace) page = new TracePage(this, decodeURIComponent(trace[1]));
    else if (path === "/graph") page = new GraphPage(this);
    else if (path === "/services") page = new ServicesPage(this);
    else if (path === "/classes") page = new ClassesPage(this);
    else if (path === "/priorities") page = new PrioritiesPage(this);
    else page = notFound(path);
    this.page = page;
    this.root.replaceChildren(page.el);
    for (const a of this.nav.querySelectorAll<HTMLAnchorElement>("a[data-section]")) {
      a.classList.toggle("active", a.dataset.section === section(path));
    }
  }

  /** Replaces the page with the token prompt; signing in loads the page again. */
  private askForToken(message: string, refused: boolean): void {
    this.forget.hidden = !storedToken();
    if (this.page instanceof SignInPage) return this.page.update(message, refused);
    this.page?.dispose();
    const prompt = new SignInPage(message, refused, () => this.route());
    this.page = prompt;
    this.root.replaceChildren(prompt.el);
    prompt.focus();
  }

  private forgetToken(): void {
    forgetToken();
    this.route();
  }

  private interceptLink(e: MouseEvent): void {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = (e.target as Element | null)?.closest?.("a");
    if (!a || a.target || a.hasAttribute("download")) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith("/api/")) return;
    e.preventDefault();
    this.go(url.pathname + url.search + url.hash);
  }

  private buildNav(): void {
    const input = h("input", { placeholder: "Go to trace ID", "aria-label": "Trace ID", spellcheck: "false" });
    const form = h(
      "form",
      {
        class: "goto",
        onsubmit: (e: Event) => {
          e.preventDefault();
          const id = input.value.trim();
          if (TRACE_ID_RE.test(id)) this.go(`/trace/${id.toLowerCase()}`);
          else input.setCustomValidity("want up to 32 hex characters");
          input.reportValidity();
        },
      },
      input,
    );
    input.addEventListener("input", () => input.setCustomValidity(""));
    this.nav.replaceChildren(
      h("a", { class: "brand", href: "/search" }, "meshtrace"),
      h("a", { href: "/search", "data-section": "search" }, "Search"),
      h("a", { href: "/graph", "data-section": "graph" }, "Service graph"),
      h("a", { href: "/services", "data-section": "services" }, "Services"),
      h("a", { href: "/classes", "data-section": "classes" }, "Classes"),
      h("a", { href: "/priorities", "data-section": "priorities" }, "Priorities"),
      h("span", { class: "spacer" }),
      form,
      this.tenantForm(),
      this.forget,
    );
  }

  /** The tenant field: the tenant whose data every page shows (empty: the default one). */
  private tenantForm(): HTMLElement {
    const input = h("input", {
      placeholder: "Tenant",
      "aria-label": "Tenant (X-Scope-OrgID)",
      title: "The tenant whose data the dashboard shows; empty: the default tenant",
      spellcheck: "false",
      "data-testid": "tenant-input",
    });
    input.value = storedTenant() ?? "";
    input.addEventListener("input", () => input.setCustomValidity(""));
    return h(
      "form",
      {
        class: "tenant",
        onsubmit: (e: Event) => {
          e.preventDefault();
          const tenant = input.value.trim();
          if (tenant && !TENANT_RE.test(tenant)) {
            input.setCustomValidity("1 to 64 letters, digits, '_', '-' or '.', not starting with '.'");
            input.reportValidity();
            return;
          }
          storeTenant(tenant);
          this.route();
        },
      },
      input,
    );
  }
}

function section(path: string): string {
  if (path === "/" || path === "/search") return "search";
  return path.split("/")[1] ?? "";
}

function notFound(path: string): Page {
  return {
    el: h("div", { class: "message" }, h("h2", null, "Page not found"), h("p", null, path), h("a", { href: "/search" }, "Back to search")),
    dispose() {},
  };
}

const app = new App(document.getElementById("app")!, document.getElementById("topbar")!);
app.route();
