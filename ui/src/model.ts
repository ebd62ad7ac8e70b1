// Derived views of a Jaeger trace: summary (root, duration, errors, class) and the span tree.

import type { KeyValue, Span, Trace } from "./api";

export function tagValue(tags: KeyValue[] | null | undefined, key: string): unknown {
  if (!tags) return undefined;
  for (const t of tags) if (t.key === key) return t.value;
  return undefined;
}

export function isErrorSpan(span: Span): boolean {
  const err = tagValue(span.tags, "error");
  if (err === true || err === "true") return true;
  const status = tagValue(span.tags, "otel.status_code");
  return typeof status === "string" && status.toUpperCase() === "ERROR";
}

export function serviceOf(trace: Trace, span: Span): string {
  return trace.processes?.[span.processID]?.serviceName ?? "unknown";
}

/** The in-trace parent of a span: its CHILD_OF reference, else its FOLLOWS_FROM one. */
export function parentId(span: Span, ids: Set<string>): string | null {
  const refs = span.references ?? [];
  const pick = (type: string) =>
    refs.find((r) => r.refType === type && r.spanID !== span.spanID && ids.has(r.spanID));
  return (pick("CHILD_OF") ?? pick("FOLLOWS_FROM"))?.spanID ?? null;
}

// The keys the server's class rules read first (fallback when its class lookup fails).
const CLASS_KEYS = ["mesh.class", "request.class"];

export interface TraceSummary {
  traceID: string;
  rootService: string;
  rootOperation: string;
  start: number;
  duration: number;
  spanCount: number;
  errorCount: number;
  services: string[];
  requestClass: string | null;
}

export function summarize(trace: Trace): TraceSummary {
  const spans = trace.spans ?? [];
  const ids = new Set(spans.map((s) => s.spanID));
  let start = Infinity;
  let end = -Infinity;
  let root: Span | null = null;
  let errors = 0;
  const services = new Set<string>();
  for (const s of spans) {
    start = Math.min(start, s.startTime);
    end = Math.max(end, s.startTime + s.duration);
    if (isErrorSpan(s)) errors++;
    services.add(serviceOf(trace, s));
    if (parentId(s, ids) === null && (root === null || s.startTime < root.startTime)) root = s;
  }
  root = root ?? spans[0] ?? null;
  let requestClass: string | null = null;
  for (const key of CLASS_KEYS) {
    const v = root ? tagValue(root.tags, key) : undefined;
    if (v !== undefined && v !== null && v !== "") {
      requestClass = String(v);
      break;
    }
  }
  return {
    traceID: trace.traceID,
    rootService: root ? serviceOf(trace, root) : "unknown",
    rootOperation: root?.operationName ?? "",
    start: Number.isFinite(start) ? start : 0,
    duration: Number.isFinite(end - start) ? end - start : 0,
    spanCount: spans.length,
    errorCount: errors,
    services: [...services].sort(),
    requestClass,
  };
}

export interface SpanNode {
  span: Span;
  service: string;
  depth: number;
  children: SpanNode[];
  error: boolean;
}

/** Builds the parent/child forest, children sorted by start time; roots likewise. */
export function buildTree(trace: Trace): SpanNode[] {
  const spans = trace.spans ?? [];
  const ids = new Set(spans.map((s) => s.spanID));
  const nodes = new Map<string, SpanNode>();
  for (const s of spans) {
    if (nodes.has(s.spanID)) continue; // duplicate span IDs: the first one wins
    nodes.set(s.spanID, {
      span: s,
      service: serviceOf(trace, s),
      depth: 0,
      children: [],
      error: isErrorSpan(s),
    });
  }
  const roots: SpanNode[] = [];
  for (const node of nodes.values()) {
    const pid = parentId(node.span, ids);
    const parent = pid ? nodes.get(pid) : undefined;
    if (parent && !createsCycle(node, parent, nodes, ids)) parent.children.push(node);
    else roots.push(node);
  }
  const byStart = (a: SpanNode, b: SpanNode) => a.span.startTime - b.span.startTime;
  roots.sort(byStart);
  const stack: SpanNode[] = [...roots];
  for (const r of roots) r.depth = 0;
  while (stack.length) {
    const n = stack.pop()!;
    n.children.sort(byStart);
    for (const c of n.children) {
      c.depth = n.depth + 1;
      stack.push(c);
    }
  }
  return roots;
}

function createsCycle(
  node: SpanNode,
  parent: SpanNode,
  nodes: Map<string, SpanNode>,
  ids: Set<string>,
): boolean {
  let cur: SpanNode | undefined = parent;
  for (let i = 0; cur && i <= nodes.size; i++) {
    if (cur === node) return true;
    const pid = parentId(cur.span, ids);
    cur = pid ? nodes.get(pid) : undefined;
  }
  return false;
}

/** Depth-first flattening of the forest, skipping the children of collapsed spans. */
export function visibleRows(roots: SpanNode[], collapsed: Set<string>): SpanNode[] {
  const out: SpanNode[] = [];
  const stack = [...roots].reverse();
  while (stack.length) {
    const n = stack.pop()!;
    out.push(n);
    if (!collapsed.has(n.span.spanID)) {
      for (let i = n.children.length - 1; i >= 0; i--) stack.push(n.children[i]);
    }
  }
  return out;
}
