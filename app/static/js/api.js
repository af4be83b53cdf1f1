// The public HTTP API with this browser's device token. The token lives in localStorage and
// travels only in the Authorization header: never in a URL, never in a cookie.
const SESSION_KEY = "paycode.session";

export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function currentSession() {
  try {
    const value = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    return value && typeof value.token === "string" ? value : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

export function clearSession() {
  localStorage.removeItem(SESSION_KEY);
}

// One key per attempt: a retry of the same attempt reuses it, so it can never pay twice.
export function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = (body && body.error) || {};
  return new ApiError(
    response.status,
    error.code || "error",
    error.message || `The server answered ${response.status}.`,
    error.field || null,
  );
}

export async function request(method, path, { body, idempotencyKey, raw = false } = {}) {
  const headers = { Accept: raw ? "*/*" : "application/json" };
  const session = currentSession();
  if (session) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new ApiError(0, "network", "No connection to the server. Check the network and retry.");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && session) {
      clearSession();
      window.dispatchEvent(new CustomEvent("paycode:logged-out"));
    }
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, body, options = {}) => request("POST", path, { ...options, body });
export const del = (path, options) => request("DELETE", path, options);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// An image the API serves only with the bearer token, as an object URL for an <img>.
export async function imageUrl(path) {
  const response = await request("GET", path, { raw: true });
  return URL.createObjectURL(await response.blob());
}
