// Client of the meshtrace query API (Jaeger-compatible JSON, same origin).

export interface KeyValue {
  key: string;
  type?: string;
  value: unknown;
}

export interface Reference {
  refType: string;
  traceID: string;
  spanID: string;
}

export interface Log {
  timestamp: number;
  fields: KeyValue[];
}

export interface Span {
  traceID: string;
  spanID: string;
  operationName: string;
  references?: Reference[] | null;
  flags?: number;
  startTime: number;
  duration: number;
  tags?: KeyValue[] | null;
  logs?: Log[] | null;
  processID: string;
  warnings?: string[] | null;
}

export interface Process {
  serviceName: string;
  tags?: KeyValue[] | null;
}

export interface Trace {
  traceID: string;
  spans: Span[];
  processes: Record<string, Process>;
  warnings?: string[] | null;
}

export interface CriticalSegment {
  span_id: string;
  start_us: number;
  end_us: number;
}

export interface Provenance {
  class?: string | null;
  critical_path?: CriticalSegment[] | null;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function getJson(path: string, signal?: AbortSignal): Promise<unknown> {
  return readJson(await fetch(path, { signal, headers: { Accept: "application/json" } }));
}

/** The JSON body of a response (null when it is not JSON); throws ApiError when not ok. */
async function readJson(res: Response): Promise<unknown> {
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) throw new ApiError(errorMessage(body) ?? `${res.status} ${res.statusText}`, res.status);
  return body;
}

function errorMessage(body: unknown): string | null {
  if (!body || typeof body !== "object") return null;
  const b = body as { error?: unknown; errors?: { msg?: unknown }[] | null };
  if (typeof b.error === "string") return b.error;
  const first = b.errors?.[0]?.msg;
  return typeof first === "string" ? first : null;
}

function dataOf<T>(body: unknown): T {
  return ((body as { data?: T } | null)?.data ?? []) as T;
}

export async function services(): Promise<string[]> {
  return dataOf<string[]>(await getJson("/api/services")).slice().sort();
}

export async function operations(service: string): Promise<string[]> {
  const body = await getJson(`/api/services/${encodeURIComponent(service)}/operations`);
  return dataOf<string[]>(body).slice().sort();
}

export async function findTraces(params: URLSearchParams, signal?: AbortSignal): Promise<Trace[]> {
  return dataOf<Trace[]>(await getJson(`/api/traces?${params.toString()}`, signal));
}

/**
 * The class the server's rules assigned to each trace (trace ID → class); traces it does not
 * know are missing. Empty when the lookup fails: the caller falls back to span attributes.
 */
export async function traceClasses(traceIds: string[], signal?: AbortSignal): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (!traceIds.length) return out;
  const q = new URLSearchParams();
  for (const id of traceIds) q.append("traceID", id);
  try {
    const body = (await getJson(`/api/v1/traces/classes?${q.toString()}`, signal)) as { classes?: unknown } | null;
    const classes = body?.classes;
    if (classes && typeof classes === "object") {
      for (const [id, v] of Object.entries(classes as Record<string, { class?: unknown }>)) {
        if (typeof v?.class === "string" && v.class) out.set(id, v.class);
      }
    }
  } catch (e) {
    if (signal?.aborted) throw e;
  }
  return out;
}

export function traceUrl(traceId: string): string {
  return `/api/traces/${encodeURIComponent(traceId)}`;
}

export async function trace(traceId: string): Promise<Trace | null> {
  try {
    const data = dataOf<Trace[]>(await getJson(traceUrl(traceId)));
    return data[0] ?? null;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

/** The provenance of a trace, or null while that API does not exist (404) or fails. */
export async function provenance(traceId: string): Promise<Provenance | null> {
  try {
    const body = await getJson(`/api/v1/traces/${encodeURIComponent(traceId)}/provenance`);
    return body && typeof body === "object" ? (body as Provenance) : null;
  } catch {
    return null;
  }
}

/** What a graph node is: an instrumented service, or a virtual node (the user, a database, an
 * uninstrumented peer). */
export type NodeKind = "service" | "user" | "database" | "peer";

export interface GraphNode {
  id: string;
  rate: number;
  error_rate: number;
  virtual: boolean;
  kind?: NodeKind;
  requests_in?: number;
  requests_out?: number;
  traces_rooted?: number;
}

export interface GraphEdge {
  caller: string;
  callee: string;
  connection_type: string;
  requests: number;
  errors?: number;
  rate_per_s: number;
  error_rate: number;
  p50_ms: number | null;
  p90_ms: number | null;
  p99_ms: number | null;
}

export interface GraphClass {
  class: string;
  traces: number;
}

export interface ServiceGraph {
  class: string | null;
  start: string;
  end: string;
  window_s: number;
  classes: GraphClass[];
  nodes: GraphNode[];
  edges: GraphEdge[];
}

/** The service graph of one class (all classes when `klass` is empty); start/end in µs. */
export async function graph(klass: string, startUs: number, endUs: number, signal?: AbortSignal): Promise<ServiceGraph> {
  const q = new URLSearchParams();
  if (klass) q.set("class", klass);
  q.set("start", String(Math.trunc(startUs)));
  q.set("end", String(Math.trunc(endUs)));
  const body = (await getJson(`/api/v1/graph?${q.toString()}`, signal)) as Partial<ServiceGraph> | null;
  return {
    class: body?.class ?? null,
    start: body?.start ?? "",
    end: body?.end ?? "",
    window_s: body?.window_s ?? 0,
    classes: Array.isArray(body?.classes) ? body.classes : [],
    nodes: Array.isArray(body?.nodes) ? body.nodes : [],
    edges: Array.isArray(body?.edges) ? body.edges : [],
  };
}

export interface ClassRule {
  class: string;
  service?: string | null;
  route_prefix?: string | null;
  operation?: string | null;
  attribute?: [string, string] | null;
  source?: string;
}

export interface MappingEntry {
  caller: string;
  callee: string;
  operation: string;
  class: string;
  count: number;
  share: number;
}

/** Every class rule in the order they apply, with where it comes from. */
export async function classRules(): Promise<ClassRule[]> {
  const body = await getJson("/api/v1/classes?effective=true");
  return Array.isArray(body) ? (body as ClassRule[]) : [];
}

/** The learned (caller, callee, operation) → class mapping. */
export async function classMapping(): Promise<MappingEntry[]> {
  const body = await getJson("/api/v1/classes/mapping");
  return Array.isArray(body) ? (body as MappingEntry[]) : [];
}

export interface Objective {
  quantile: number;
  latency_ms: number;
  importance?: number;
  min_share?: number | null;
}

export interface HopBudget {
  service: string;
  operation: string;
  depth?: number;
  parallel?: boolean;
  budget_ms: number;
  subtree_budget_ms?: number;
  observed_ms: number;
  slack_ms: number;
  share?: number;
  rate_per_s?: number;
  load_share?: number;
  at_risk?: boolean;
}

export interface ClassBudget {
  class: string;
  objective: Objective;
  observed_ms: number | null;
  attainment: number | null;
  samples?: number;
  missing?: boolean;
  /** Where the objective comes from (`config`, `catalog`). */
  source?: string | null;
  hops: HopBudget[];
}

/**
 * The per-class budgets, or null when that API does not exist (404). Accepts a bare list or
 * a list under `budgets`, `classes` or `data`.
 */
export async function budgets(): Promise<ClassBudget[] | null> {
  let body: unknown;
  try {
    body = await getJson("/api/v1/budgets");
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
  const o = body as Record<string, unknown> | null;
  const list = Array.isArray(body)
    ? body
    : [o?.budgets, o?.classes, o?.data].find((v) => Array.isArray(v));
  if (!Array.isArray(list)) return [];
  return list.filter(
    (b): b is ClassBudget => !!b && typeof b === "object" && typeof (b as ClassBudget).class === "string",
  );
}

export interface BudgetHistoryPoint {
  /** Unix milliseconds (or an RFC 3339 string) of the budget update step. */
  t: number | string;
  observed_ms: number | null;
  attainment: number | null;
  samples?: number;
  objective_ms: number;
}

export interface ClassBudgetHistory {
  class: string;
  points: BudgetHistoryPoint[];
}

/**
 * The server's per-class budget history (the recent update steps, oldest first), or null when
 * that API does not exist (404).
 */
export async function budgetHistory(klass?: string, sinceMs?: number): Promise<ClassBudgetHistory[] | null> {
  const q = new URLSearchParams();
  if (klass) q.set("class", klass);
  if (sinceMs !== undefined) q.set("since", String(Math.floor(sinceMs)));
  const qs = q.toString();
  let body: unknown;
  try {
    body = await getJson(`/api/v1/budgets/history${qs ? `?${qs}` : ""}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
  if (!Array.isArray(body)) return [];
  return body.filter(
    (c): c is ClassBudgetHistory =>
      !!c && typeof c === "object" && typeof (c as ClassBudgetHistory).class === "string" && Array.isArray((c as ClassBudgetHistory).points),
  );
}

export interface NameValue {
  name: string;
  value: string;
}

export interface PriorityMatch {
  header?: NameValue | null;
  baggage?: { key: string; value: string } | null;
  signatures?: { caller: string; operation: string; share: number }[] | null;
}

export interface Assignment {
  class: string;
  /** 0 is the highest priority. */
  priority: number;
  timeout_ms: number;
  match?: PriorityMatch | null;
  reason: string;
  min_share?: number | null;
}

/** One published version of a service's assignment set, with why it changed. */
export interface PriorityVersion {
  version: number;
  generated_at: string;
  reason: string;
  assignments: Assignment[];
}

export interface ProxyInfo {
  service: string;
  node: string;
  /** `http` or `grpc`. */
  via: string;
  last_seen: string;
  /** The version it holds (last sent to it). */
  version: number;
}

/** The proxies that polled or watched their priorities. */
export async function proxies(signal?: AbortSignal): Promise<ProxyInfo[]> {
  const body = (await getJson("/api/v1/proxies", signal)) as { proxies?: unknown } | null;
  return Array.isArray(body?.proxies) ? (body.proxies as ProxyInfo[]) : [];
}

/**
 * A service's published versions, oldest first. The newest is the current set: the dashboard
 * reads it from here rather than from `GET /api/v1/priorities`, which would list the
 * dashboard itself as a proxy.
 */
export async function priorityHistory(service: string, signal?: AbortSignal): Promise<PriorityVersion[]> {
  const body = (await getJson(`/api/v1/priorities/history?service=${encodeURIComponent(service)}`, signal)) as {
    versions?: unknown;
  } | null;
  const list = Array.isArray(body?.versions) ? (body.versions as PriorityVersion[]) : [];
  return list
    .map((v) => ({ ...v, assignments: Array.isArray(v.assignments) ? v.assignments : [] }))
    .sort((a, b) => a.version - b.version);
}

/** The operator overrides, class → level. */
export async function priorityOverrides(signal?: AbortSignal): Promise<Record<string, number>> {
  const body = await getJson("/api/v1/priorities/overrides", signal);
  return body && typeof body === "object" && !Array.isArray(body) ? (body as Record<string, number>) : {};
}

/** Replaces every operator override (`{}` clears them); answers the stored overrides. */
export async function setPriorityOverrides(overrides: Record<string, number>): Promise<Record<string, number>> {
  const res = await fetch("/api/v1/priorities/overrides", {
    method: "PUT",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(overrides),
  });
  const body = await readJson(res);
  return body && typeof body === "object" ? (body as Record<string, number>) : {};
}
