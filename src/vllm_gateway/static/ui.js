// Helpers of every part of the dashboard: DOM building, numbers and times as text, toasts.
// No state but the gateway's clock skew, which every "… ago" must use.

const PALETTE = ["#5b8cff", "#3ccf7e", "#f0b43c", "#c77dff", "#ff7a7a", "#33c3d6", "#ff9f40", "#9aa5b8"];
let skewS = 0;

export const $ = (sel) => document.querySelector(sel);

export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k === "title" || k === "type") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}
export function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
export function gb(x) { return (Math.round(x * 10) / 10).toString(); }
export function colorOf(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}
// The gateway may run on another host whose clock differs; "12 s ago" must use its clock.
export function noteSkew(resp) {
  const date = Date.parse(resp.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    const skew = (date - Date.now()) / 1000;
    skewS = Math.abs(skew) > 2 ? skew : 0;
  }
}
export function nowS() { return Date.now() / 1000 + skewS; }
export function ago(t) {
  if (t === null || t === undefined) return "never";
  const d = Math.max(0, nowS() - t);
  if (d < 2) return "just now";
  if (d < 90) return Math.round(d) + " s ago";
  if (d < 5400) return Math.round(d / 60) + " min ago";
  if (d < 172800) return Math.round(d / 3600) + " h ago";
  return Math.round(d / 86400) + " d ago";
}
export function secs(s) { return s < 100 ? s.toFixed(1) + " s" : Math.round(s) + " s"; }
export function span(s) { return s < 90 ? Math.round(s) + " s" : s < 5400 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h"; }
export function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour12: false }); }
export function toast(text) {
  const t = el("div", { class: "toast", role: "alert", text });
  $("#toasts").append(t);
  setTimeout(() => t.remove(), 8000);
}
