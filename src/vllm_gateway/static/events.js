// The gateway's lifecycle events, read page by page from /gateway/events: the list of recent
// ones (newest first) and the longer log in order that the timeline is rebuilt from.
import { schedule } from "./poll.js";
import { $, clock, el } from "./ui.js";

const MAX_EVENTS = 200, MAX_TIMELINE = 3000;
// since: the seq to ask from next; events: the list shown; tl: the timeline's, oldest first.
export const feed = { since: 0, events: [], tl: [] };

export function addEvents(page) {
  // A restarted gateway numbers its events from the start again.
  if (typeof page.next === "number" && page.next < feed.since) {
    feed.events = [];
    feed.tl = [];
    feed.since = 0;
    schedule(0);
    return;
  }
  const known = new Set(feed.events.map((e) => e.seq));
  for (const e of page.events || []) if (!known.has(e.seq)) feed.events.push(e);
  const last = feed.tl.length ? feed.tl[feed.tl.length - 1].seq : 0;
  for (const e of page.events || []) if (e.seq > last) feed.tl.push(e);
  if (feed.tl.length > MAX_TIMELINE) feed.tl.splice(0, feed.tl.length - MAX_TIMELINE);
  feed.events.sort((a, b) => b.seq - a.seq);
  feed.events.length = Math.min(feed.events.length, MAX_EVENTS);
  if (typeof page.next === "number") feed.since = page.next;
  if (!(page.events || []).length && $("#events").dataset.rendered) return;
  $("#events").dataset.rendered = "1";
  const rows = feed.events.map((e) => el("div", { class: "event", "data-seq": String(e.seq), "data-kind": e.kind, "data-model": e.model },
    el("time", { class: "mono", text: clock(e.time) }),
    el("span", { class: "mono name", text: e.model }),
    el("span", {}, el("span", { class: "badge s-" + e.kind, text: e.kind.replace(/_/g, " ") })),
    el("span", { class: "msg", title: e.message, text: e.message })));
  $("#events").replaceChildren(...(rows.length ? rows : [el("div", { class: "empty", text: "No events yet." })]));
}
