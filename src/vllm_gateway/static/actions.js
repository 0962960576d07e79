// Load / unload / sleep, and the admin key they (and, with protect_status, the polls) need.
import { KEY_STORE, authHeaders, errorText } from "./api.js";
import { schedule } from "./poll.js";
import { $, setText, toast } from "./ui.js";

// "model/action" of each request still open: its button stays disabled across polls.
export const busy = new Set();
let keyRetry = null, keyDismissed = false;

export async function act(action, name) {
  const busyKey = name + "/" + action;
  const btn = document.querySelector(`button[data-action="${action}"][data-model="${CSS.escape(name)}"]`);
  busy.add(busyKey);
  if (btn) { btn.disabled = true; btn.classList.add("busy"); }
  schedule(300); // show "starting"/"stopping" while the request is still open
  try {
    const resp = await fetch(`/gateway/models/${name.split("/").map(encodeURIComponent).join("/")}/${action}`, { method: "POST", headers: authHeaders() });
    if (resp.status === 401 || resp.status === 403) {
      askKey(() => act(action, name), resp.status);
    } else if (!resp.ok) {
      toast(`${action} ${name}: HTTP ${resp.status} ${await errorText(resp)}`);
    }
  } catch (err) {
    toast(`${action} ${name}: ${err.message}`);
  } finally {
    busy.delete(busyKey);
    if (btn) btn.classList.remove("busy");
    schedule(0);
  }
}
// A poll was refused: ask for a key, unless the dialog was dismissed (polls come every second).
export function pollRefused(status) {
  if (!keyDismissed) askKey(null, status);
}
function askKey(retry, status) {
  const dialog = $("#key-dialog");
  if (retry) keyRetry = retry;
  const had = Boolean(sessionStorage.getItem(KEY_STORE));
  // 401: no key or an unknown one. 403: a known key that may not do this (not an admin
  // key); it still serves for reading, so it stays until another is given.
  if (had && status === 401) sessionStorage.removeItem(KEY_STORE);
  if (dialog.open) return;
  setText($("#key-error"), !had ? "" : status === 403
    ? "The saved key may not do this (HTTP 403): an admin key is needed."
    : "The saved key was refused (HTTP 401).");
  $("#key-input").value = "";
  dialog.showModal();
}
$("#key-form").addEventListener("submit", () => {
  const key = $("#key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  keyDismissed = false;
  const retry = keyRetry;
  keyRetry = null;
  if (retry) retry();
  schedule(0);
});
$("#key-cancel").addEventListener("click", () => {
  keyRetry = null;
  keyDismissed = true;
  $("#key-dialog").close();
});
// Escape closes the dialog too; polls must not open it again every second.
$("#key-dialog").addEventListener("cancel", () => {
  keyRetry = null;
  keyDismissed = true;
});
$("#key-button").addEventListener("click", () => {
  keyDismissed = false;
  $("#key-dialog").showModal();
});
