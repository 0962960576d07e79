// The poll loop: one poll at a time, one a second, none while the tab is hidden. What a poll
// does is given by the entry (dashboard.js), so the parts that ask for a poll soon (an action,
// a restarted gateway) need import only this.
import { $, setText } from "./ui.js";

const POLL_MS = 1000;
let timer = null, running = false, poll = null;

export function startPolling(fn) { poll = fn; tick(); }
export function schedule(delayMs) { clearTimeout(timer); timer = setTimeout(tick, delayMs); }
async function tick() {
  timer = null;
  if (running) return; // the running poll schedules the next one
  if (document.hidden) { setLive("paused", "Paused (tab hidden)"); return; }
  running = true;
  try {
    await poll();
  } finally {
    running = false;
  }
  // The tab may have been hidden while this poll was waiting for answers.
  if (document.hidden) setLive("paused", "Paused (tab hidden)");
  else if (timer === null) schedule(POLL_MS);
}
export function setLive(mode, text) { $("#live").dataset.live = mode; setText($("#live-text"), text); }
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) return schedule(0);
  clearTimeout(timer);
  timer = null;
  setLive("paused", "Paused (tab hidden)");
});
