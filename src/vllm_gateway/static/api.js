// Talking to the gateway: the admin key (if one was given) on every call, its errors as text.
import { noteSkew } from "./ui.js";

export const KEY_STORE = "vllm-gateway.admin-key";

export class AuthError extends Error { constructor(status) { super("HTTP " + status); this.status = status; } }

export function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: "Bearer " + key } : {};
}
export async function errorText(resp) {
  try {
    const body = await resp.json();
    const e = body.error;
    return (e && (e.message || e)) || body.message || JSON.stringify(body);
  } catch (_) { return resp.statusText; }
}
export async function getJSON(path) {
  const resp = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (resp.status === 401 || resp.status === 403) throw new AuthError(resp.status);
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status + " " + (await errorText(resp)));
  noteSkew(resp);
  return resp.json();
}
