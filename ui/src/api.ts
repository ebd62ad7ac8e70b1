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
  const res = await fetch(path, { signal, headers: { Accept: "application/json" } });
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
