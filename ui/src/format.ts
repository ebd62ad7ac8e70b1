// Formatting of durations (µs), times and per-service colours.

export function formatDuration(us: number): string {
  if (!Number.isFinite(us)) return "–";
  const a = Math.abs(us);
  if (a < 1000) return `${trim(us)}µs`;
  if (a < 1_000_000) return `${trim(us / 1000)}ms`;
  if (a < 60_000_000) return `${trim(us / 1_000_000)}s`;
  const m = Math.floor(us / 60_000_000);
  const s = (us - m * 60_000_000) / 1_000_000;
  return `${m}m${trim(s)}s`;
}

function trim(v: number): string {
  const a = Math.abs(v);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  return Number(v.toFixed(digits)).toString();
}

const pad = (n: number, w = 2) => String(n).padStart(w, "0");

/** Local wall time of a µs timestamp: `2024-05-01 12:34:56.789`. */
export function formatTime(us: number): string {
  const d = new Date(us / 1000);
  if (Number.isNaN(d.getTime())) return "–";
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
  );
}

/** "3m ago" style age of a µs timestamp. */
export function formatAge(us: number, nowMs = Date.now()): string {
  const s = Math.round((nowMs - us / 1000) / 1000);
  if (s < 0) return "in the future";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

const PALETTE = [
  "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
  "#9c755f", "#ff9da7", "#2f8f9d", "#8cd17d", "#a0cbe8", "#d37295",
  "#86bcb6", "#b6992d", "#499894", "#f1ce63",
];

/** A stable colour per service name. */
export function serviceColor(service: string): string {
  let hash = 2166136261;
  for (let i = 0; i < service.length; i++) {
    hash ^= service.charCodeAt(i);
    hash = Math.imul(hash, 16777619);
  }
  return PALETTE[(hash >>> 0) % PALETTE.length];
}
