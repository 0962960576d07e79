// The dashboard's entry (loaded by dashboard.html as a module): the theme, and what one poll
// does. Each part lives in a module of its own:
//   ui.js        DOM and text helpers, the gateway's clock, toasts
//   api.js       HTTP calls with the admin key
//   poll.js      the poll loop (paused while the tab is hidden)
//   status.js    GPUs, models and the summary, from /gateway/status
//   events.js    recent events, from /gateway/events
//   timeline.js  the last hour, rebuilt from the events
//   actions.js   load / unload / sleep and the admin-key dialog
// The gateway serves exactly these files (web/ops.py, DASHBOARD_FILES): a new one goes there too.
import { pollRefused } from "./actions.js";
import { AuthError, getJSON } from "./api.js";
import { addEvents, feed } from "./events.js";
import { setLive, startPolling } from "./poll.js";
import { renderStatus } from "./status.js";
import { renderTimeline } from "./timeline.js";
import { $, clock } from "./ui.js";

const THEME_STORE = "vllm-gateway.theme";

async function poll() {
  try {
    const [status, events] = await Promise.all([getJSON("/gateway/status"), getJSON("/gateway/events?since=" + feed.since)]);
    renderStatus(status);
    addEvents(events);
    renderTimeline(status.models || [], feed.tl);
    setLive("live", "Live · " + clock(Date.now() / 1000));
  } catch (err) {
    // Any failure, a rendering one too, reads as "unreachable"; the next poll comes all the same.
    if (err instanceof AuthError) {
      setLive("locked", "Admin key needed");
      pollRefused(err.status);
    } else {
      setLive("offline", "Gateway unreachable");
    }
  }
}

// ---- theme ------------------------------------------------------------
function applyTheme(theme) { document.documentElement.dataset.theme = theme; }
const stored = localStorage.getItem(THEME_STORE);
applyTheme(stored || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
$("#theme-button").addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  localStorage.setItem(THEME_STORE, next);
  applyTheme(next);
});

startPolling(poll);
