// The dashboard's bearer token. When the server has `[[auth.tokens]]` configured, every
// `/api/` request needs `Authorization: Bearer <token>`: the token the user entered is kept
// in this browser's local storage and sent with every request (api.ts). A 401 answer is
// reported here, and the app (main.ts) then asks for a token (signin.ts).

const KEY = "meshtrace.token";

/** The stored token, or null. */
export function storedToken(): string | null {
  try {
    return localStorage.getItem(KEY) || null;
  } catch {
    return null;
  }
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

/** The `Authorization` header for a token (none without one). */
export function authHeaders(token: string | null): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
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
