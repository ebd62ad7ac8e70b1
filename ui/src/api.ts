// Client of the meshtrace query API (same origin). The response types of `/api/v1` and of the
// RED metrics (Jaeger's SPM API, `/api/metrics`) are generated from the server's OpenAPI
// document (docs/openapi.json, `npm run types`); the other Jaeger API types are Jaeger's and
// written out here. Every request carries the stored bearer token (auth.ts); a 401 answer
// makes the dashboard ask for one.

import type { components } from "../generated/openapi";
import { authHeaders, storedToken, unauthorized } from "./auth";

type Schemas = components["schemas"];
export type Provenance = Schemas["TraceProvenance"];
export type CriticalSegment = Schemas["PathSection"];
export type NodeKind = Schemas["NodeKind"];
export type GraphNode = Schemas["GraphNode"];
export type GraphEdge = Schemas["GraphEdge"];
export type GraphClass = Schemas["ClassCount"];
export type ServiceGraph = Schemas["GraphView"];
export type ClassRule = Schemas["RuleView"];
export type MappingEntry = Schemas["MappingEntry"];
export type Objective = Schemas["Objective"];
export type HopBudget = Schemas["HopView"];
export type ClassBudget = Schemas["BudgetView"];
export type BudgetHistoryPoint = Schemas["HistoryPoint"];
export type ClassBudgetHistory = Schemas["ClassHistory"];
export type NameValue = Schemas["NameValue"];
export type PriorityMatch = Schemas["MatchJson"];
export type Assignment = Schemas["AssignmentJson"];
export type PriorityVersion = Schemas["PublishedVersion"];
export type ProxyInfo = Schemas["ProxyInfo"];
export type MetricFamily = Schemas["MetricFamily"];
/** Span kinds the metrics API counts (Jaeger's `spanKind`). */
export type SpanKindName = "server" | "client" | "producer" | "consumer" | "internal" | "unspecified";

/** The parameters `/api/metrics/{calls,errors,latencies}` share (Jaeger's); times in ms. */
export interface RedQuery {
  service: string;
  spanKind?: SpanKindName;
  /** One series per operation instead of one for the service. */
  groupByOperation?: boolean;
  endTs?: number;
  lookback?: number;
  step?: number;
  /** The window each point is computed over, ending at the point. */
  ratePer?: number;
}

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

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function getJson(path: string, signal?: AbortSignal): Promise<unknown> {
  return readJson(await send(path, { signal }));
}

/** Fetches a same-origin path with the stored token; a 401 is reported to auth.ts. */
async function send(path: string, init: RequestInit & { headers?: Record<string, string> }): Promise<Response> {
  const token = storedToken();
  const headers = { Accept: "application/json", ...init.headers, ...authHeaders(token) };
  const res = await fetch(path, { ...init, headers });
  if (res.status === 401) {
    const body = (await res.clone().json().catch(() => null)) as unknown;
    unauthorized(errorMessage(body) ?? "this server requires an access token", token);
  }
  return res;
}

/**
 * Whether the server accepts a token for reading (the dashboard's needs): throws the
 * server's ApiError (401 unknown token, 403 lacking the read scope) when not.
 */
export async function checkToken(token: string): Promise<void> {
  await readJson(await fetch("/api/services", { headers: { Accept: "application/json", ...authHeaders(token) } }));
}

/**
 * Opens a path's raw JSON in a new tab. With a token stored, a link cannot carry it: the
 * JSON is fetched with the token and shown from a blob URL.
 */
export async function openRaw(path: string): Promise<void> {
  const res = await send(path, {});
  if (res.status === 401) return; // the dashboard asks for a token instead
  const blob = new Blob([await res.arrayBuffer()], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  window.open(url, "_blank", "noopener");
  window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
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
    const body = (await getJson(`/api/v1/traces/classes?${q.toString()}`, signal)) as Schemas["TraceClasses"];
    for (const [id, v] of Object.entries(body.classes)) {
      if (v.class) out.set(id, v.class);
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

/** The provenance of a trace, or null when it fails (the timeline is drawn without it). */
export async function provenance(traceId: string): Promise<Provenance | null> {
  try {
    return (await getJson(`/api/v1/traces/${encodeURIComponent(traceId)}/provenance`)) as Provenance;
  } catch {
    return null;
  }
}

/** The service graph of one class (all classes when `klass` is empty); start/end in µs. */
export async function graph(klass: string, startUs: number, endUs: number, signal?: AbortSignal): Promise<ServiceGraph> {
  const q = new URLSearchParams();
  if (klass) q.set("class", klass);
  q.set("start", String(Math.trunc(startUs)));
  q.set("end", String(Math.trunc(endUs)));
  return (await getJson(`/api/v1/graph?${q.toString()}`, signal)) as ServiceGraph;
}

/** Every class rule in the order they apply, with where it comes from. */
export async function classRules(): Promise<ClassRule[]> {
  return (await getJson("/api/v1/classes?effective=true")) as ClassRule[];
}

/** The learned (caller, callee, operation) → class mapping. */
export async function classMapping(): Promise<MappingEntry[]> {
  return (await getJson("/api/v1/classes/mapping")) as MappingEntry[];
}

/** The per-class budgets (classes with an objective). */
export async function budgets(): Promise<ClassBudget[]> {
  return ((await getJson("/api/v1/budgets")) as Schemas["Budgets"]).classes;
}

/** The server's per-class budget history (the recent update steps, oldest first). */
export async function budgetHistory(klass?: string, sinceMs?: number): Promise<ClassBudgetHistory[]> {
  const q = new URLSearchParams();
  if (klass) q.set("class", klass);
  if (sinceMs !== undefined) q.set("since", String(Math.floor(sinceMs)));
  const qs = q.toString();
  return (await getJson(`/api/v1/budgets/history${qs ? `?${qs}` : ""}`)) as ClassBudgetHistory[];
}

/** The smallest step (ms) the RED metrics resolve: `GET /api/metrics/minstep`. */
export async function metricsMinStep(signal?: AbortSignal): Promise<number> {
  return ((await getJson("/api/metrics/minstep", signal)) as Schemas["MinStep"]).data;
}

/**
 * Calls per second, or the fraction of calls with an error status, over time (Jaeger's SPM
 * API): one series per service, or per operation with `groupByOperation`; a window without
 * calls has no point.
 */
export async function redMetric(metric: "calls" | "errors", query: RedQuery, signal?: AbortSignal): Promise<MetricFamily> {
  return (await getJson(`/api/metrics/${metric}?${metricsQuery(query)}`, signal)) as MetricFamily;
}

/** A latency quantile (0 < q <= 1, in ms) over time, series as in `redMetric`. */
export async function latencyMetric(query: RedQuery & { quantile: number }, signal?: AbortSignal): Promise<MetricFamily> {
  return (await getJson(`/api/metrics/latencies?${metricsQuery(query)}`, signal)) as MetricFamily;
}

function metricsQuery(query: RedQuery & { quantile?: number }): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
  return q.toString();
}

/** The proxies that polled or watched their priorities. */
export async function proxies(signal?: AbortSignal): Promise<ProxyInfo[]> {
  return ((await getJson("/api/v1/proxies", signal)) as Schemas["Proxies"]).proxies;
}

/**
 * A service's published versions, oldest first. The newest is the current set: the dashboard
 * reads it from here rather than from `GET /api/v1/priorities`, which would list the
 * dashboard itself as a proxy.
 */
export async function priorityHistory(service: string, signal?: AbortSignal): Promise<PriorityVersion[]> {
  const path = `/api/v1/priorities/history?service=${encodeURIComponent(service)}`;
  const body = (await getJson(path, signal)) as Schemas["PriorityHistory"];
  return body.versions.slice().sort((a, b) => a.version - b.version);
}

type Overrides = Record<string, number>;

/** The operator overrides, class → level. */
export async function priorityOverrides(signal?: AbortSignal): Promise<Overrides> {
  return (await getJson("/api/v1/priorities/overrides", signal)) as Overrides;
}

/** Replaces every operator override (`{}` clears them); answers the stored overrides. */
export async function setPriorityOverrides(overrides: Overrides): Promise<Overrides> {
  const res = await send("/api/v1/priorities/overrides", {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(overrides),
  });
  return (await readJson(res)) as Overrides;
}
