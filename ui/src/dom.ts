// DOM helpers. Span data is attacker-controlled, so every string that reaches the page goes
// through text nodes (`textContent` / `createTextNode`); nothing here parses HTML.

export type Child = Node | string | number | null | undefined | false;

export interface Attrs {
  [name: string]: string | number | boolean | null | undefined | EventListener;
}

/** Creates an element; `on*` attributes given as functions become event listeners. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (typeof value === "function") {
        el.addEventListener(name.replace(/^on/, ""), value);
      } else if (name === "class") {
        el.className = String(value);
      } else if (name === "href") {
        el.setAttribute("href", safeHref(String(value)));
      } else {
        el.setAttribute(name, value === true ? "" : String(value));
      }
    }
  }
  append(el, ...children);
  return el;
}

/** Appends children, turning strings into text nodes. */
export function append(el: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

/** Removes every child of an element. */
export function clear(el: Element): void {
  el.replaceChildren();
}

/** Only same-origin paths are linked: anything else becomes a harmless fragment. */
export function safeHref(href: string): string {
  return href.startsWith("/") && !href.startsWith("//") ? href : "#";
}

// Bidirectional-text controls (LRM, RLM, ALM, embeddings, overrides, isolates) can reorder
// the text around them ("Trojan Source"); they are shown as visible markers instead.
const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** The number of characters of a value shown before "show all". */
export const VALUE_PREVIEW_CHARS = 300;

/**
 * Renders an untrusted value as text in an isolated bidi context, with bidi controls made
 * visible and very long values cut to a preview that can be expanded.
 */
export function valueText(value: string): HTMLElement {
  const box = h("span", { class: "val", dir: "auto" });
  const long = value.length > VALUE_PREVIEW_CHARS;
  const fill = (full: boolean) => {
    clear(box);
    appendMarked(box, full ? value : value.slice(0, VALUE_PREVIEW_CHARS));
    if (long && !full) {
      box.appendChild(
        h(
          "button",
          { class: "more", type: "button", onclick: () => fill(true) },
          `… show all (${formatBytes(value.length)})`,
        ),
      );
    }
  };
  fill(false);
  return box;
}

function appendMarked(el: HTMLElement, text: string): void {
  let last = 0;
  for (const m of text.matchAll(BIDI)) {
    const at = m.index ?? 0;
    if (at > last) el.appendChild(document.createTextNode(text.slice(last, at)));
    const code = m[0].codePointAt(0) ?? 0;
    const mark = `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
    el.appendChild(h("span", { class: "ctl", title: "bidirectional control character" }, mark));
    last = at + m[0].length;
  }
  if (last < text.length) el.appendChild(document.createTextNode(text.slice(last)));
}

/** Strips bidi controls (for places that show a plain single-line label). */
export function plainLabel(text: string, max = 200): string {
  const s = text.replace(BIDI, "");
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} chars`;
  return `${(n / 1024).toFixed(1)} k chars`;
}
