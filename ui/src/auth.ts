// The dashboard's bearer token. When the server has `[[auth.tokens]]` configured, every
// `/api/` request needs `Authorization: Bearer <token>`: the token the user entered is kept
// in this browser's local storage and sent with every request (api.ts). A 401 answer is
// reported here, and the app (main.ts) then asks for a token (signin.ts).

const KEY = "meshtrace.token";

/** What local storage holds under `key`, or null (also when storage is unavailable). */
function stored(key: string): string | null {
  try {
    return localStorage.getItem(key) || null;
  } catch {
    return null;
  }
}

/** The stored token, or null. */
export function storedToken(): string | null {
  return stored(KEY);
}

export function storeToken(token: string): void {
  localStorage.setItem(KEY, token);
}

export function forgetToken(): void {
  try {
    localStorage.removeItem(KEY);
  } catch {
    // Storage unavailable: nothing was stored either.
  }
}

/** The `Authorization` header for a token, and the tenant header (none without them). */
export function authHeaders(token: string | null): Record<string, string> {
  const tenant = storedTenant();
  return {
    ...(token ? { Authorization: `Bearer ${token}` } : {}),
    ...(tenant ? { "X-Scope-OrgID": tenant } : {}),
  };
}

// The tenant whose data the dashboard shows (`X-Scope-OrgID`), chosen in the top bar and kept
// in local storage; none: the server's default tenant, or the one the token is bound to.
const TENANT_KEY = "meshtrace.tenant";

/** What the server accepts as a tenant identifier. */
export const TENANT_RE = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;

/** The chosen tenant, or null. */
export function storedTenant(): string | null {
  return stored(TENANT_KEY);
}

/** Chooses a tenant (an empty one: the default). */
export function storeTenant(tenant: string): void {
  if (tenant) localStorage.setItem(TENANT_KEY, tenant);
  else localStorage.removeItem(TENANT_KEY);
}

/** `message`: the server's; `refused`: the request carried the stored token (now forgotten). */
type UnauthorizedHandler = (message: string, refused: boolean) => void;
let onUnauthorized: UnauthorizedHandler | null = null;

/** Sets what happens when the server asks for a token. */
export function setUnauthorizedHandler(fn: UnauthorizedHandler): void {
  onUnauthorized = fn;
}

/**
 * Called on a 401 to a request sent with `sentToken`. An answer to a request sent before the
 * token changed is ignored; a stored token the server refused is forgotten.
 */
export function unauthorized(message: string, sentToken: string | null): void {
  if (sentToken !== storedToken()) return;
  if (sentToken) forgetToken();
  onUnauthorized?.(message, sentToken !== null);
}
