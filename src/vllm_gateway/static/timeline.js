// The "Last hour" panel: a band per model of what it was doing, rebuilt each poll from the
// events (oldest first) and the models' states now, with a mark per start, wake, eviction and
// failure whose reason shows on hover.
import { $, clock, el, nowS, secs } from "./ui.js";

const WINDOW_S = 3600;
const THRASH_SWAPS = 3; // evictions for room an hour from which a model is flagged as swapping

// The band a model is in after an event of each kind, and before the first one seen (only
// the long states: where the log does not reach back, a guess of "starting" would mislead).
const AFTER = { starting: "starting", ready: "loaded", woken: "loaded", draining: "draining", asleep: "asleep",
  stopping: "stopping", evicted: "stopping", idle_stop: "stopping", sleep_failed: "stopping", stopped: "stopped",
  failed: "stopped", crashed: "stopped", unhealthy: "stopped", wake_failed: "starting" };
const BEFORE = { woken: "asleep", wake_failed: "asleep", draining: "loaded", stopping: "loaded", evicted: "loaded",
  idle_stop: "loaded", crashed: "loaded", unhealthy: "loaded" };
const NOW_BAND = { starting: "starting", ready: "loaded", draining: "draining", sleeping: "asleep", waking: "waking", stopping: "stopping" };
const MARKS = { starting: "start", woken: "wake", evicted: "evict", idle_stop: "evict", stopping: "evict", asleep: "evict",
  failed: "fail", crashed: "fail", unhealthy: "fail", sleep_failed: "fail", wake_failed: "fail" };
const REASONS = { lru: "room for another model", idle: "idle timeout", manual: "asked for by an operator",
  sleep_timeout: "asleep too long", unhealthy: "stopped answering", shutdown: "gateway shutting down", node_lost: "its node left" };
function tipText(e) {
  const r = /\((\w+)\)/.exec(e.message);
  const why = r && REASONS[r[1]] ? " — " + REASONS[r[1]] : "";
  return `${clock(e.time)} ${e.kind.replace(/_/g, " ")}: ${e.message}${why}`;
}
function bandsOf(evs, state, t0, now) {
  const out = [];
  let cur = (evs.length ? BEFORE[evs[0].kind] : NOW_BAND[state]) || "stopped";
  let from = t0;
  for (const e of evs) {
    const next = AFTER[e.kind];
    if (!next || next === cur) continue;
    out.push([from, e.time, cur]);
    [cur, from] = [next, e.time];
  }
  out.push([from, now, NOW_BAND[state] || "stopped"]); // the status is the truth for now
  return out.filter(([a, b, k]) => k !== "stopped" && b > t0 && b > a);
}
export function renderTimeline(models, events) {
  const now = nowS(), t0 = now - WINDOW_S;
  const pct = (t) => (100 * (Math.min(Math.max(t, t0), now) - t0)) / WINDOW_S;
  const byModel = new Map(models.map((m) => [m.name, []]));
  for (const e of events) if (byModel.has(e.model)) byModel.get(e.model).push(e);
  const rows = [el("div", { class: "tl-row axis" }, el("span", { text: "model" }),
    el("div", { class: "track" }, ...["−60 min", "−45", "−30", "−15", "now"].map((t) => el("span", { text: t }))),
    el("span", { text: "starts" }), el("span", { text: "requests" }), el("span", { text: "p95" }))];
  for (const m of models) {
    const evs = byModel.get(m.name);
    const track = el("div", { class: "track", "data-field": "track" });
    for (const [a, b, k] of bandsOf(evs, m.state, t0, now)) {
      track.append(el("i", { class: "band b-" + k, "data-band": k, style: `left:${pct(a)}%;width:${pct(b) - pct(a)}%` }));
    }
    let starts = 0, swaps = 0;
    for (const e of evs) {
      if (!MARKS[e.kind] || e.time < t0) continue;
      if (e.kind === "starting") starts++;
      if (MARKS[e.kind] === "evict" && /\(lru\)/.test(e.message)) swaps++;
      track.append(el("i", { class: "mark m-" + MARKS[e.kind], "data-kind": e.kind, "data-tip": tipText(e), style: `left:${pct(e.time)}%` }));
    }
    const r = m.recent || {};
    const thrash = swaps >= THRASH_SWAPS;
    rows.push(el("div", { class: "tl-row", "data-model": m.name },
      el("span", { class: "name mono", title: m.name, text: m.name }), track,
      el("span", { class: thrash ? "warn" : "", "data-field": "starts", title: thrash ? `evicted for room ${swaps} times in the last hour: swapping` : "",
        text: starts + (starts === 1 ? " start" : " starts") }),
      el("span", { "data-field": "rate", text: typeof r.requests_per_min === "number" ? (r.requests_per_min < 10 ? r.requests_per_min.toFixed(1) : Math.round(r.requests_per_min)) + "/min" : "—" }),
      el("span", { "data-field": "p95", text: typeof r.p95_s === "number" ? secs(r.p95_s) : "—" })));
  }
  $("#timeline").replaceChildren(...rows);
}
// One listener for every mark: the marks are rebuilt each poll.
$("#timeline").addEventListener("mouseover", (ev) => {
  const mark = ev.target.closest(".mark");
  const tip = $("#tip");
  tip.hidden = !mark;
  if (!mark) return;
  tip.textContent = mark.dataset.tip;
  const box = mark.getBoundingClientRect();
  tip.style.left = Math.max(8, Math.min(box.left, innerWidth - 400)) + "px";
  tip.style.top = box.bottom + 6 + "px";
});
$("#timeline").addEventListener("mouseleave", () => { $("#tip").hidden = true; });
