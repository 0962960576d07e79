// The status document drawn: a card per GPU (and host RAM), a row per model, the summary line.
import { act, busy } from "./actions.js";
import { $, ago, colorOf, el, gb, secs, setText, span } from "./ui.js";

// States that hold GPU memory; a sleeper holds only its residual (CUDA context, pools).
const HOLDS_MEMORY = new Set(["starting", "ready", "draining", "sleeping", "waking", "stopping"]);
const CAN_LOAD = new Set(["stopped", "failed", "backoff", "held"]);
const CAN_UNLOAD = new Set(["starting", "ready", "draining", "sleeping", "waking", "failed"]);
const COUNTED = ["starting", "draining", "sleeping", "waking", "stopping", "failed", "backoff", "held"];
// A row per model, kept across polls so that a button under the pointer stays the same node.
const rows = new Map();

// ---- GPUs -------------------------------------------------------------
function renderGpus(gpus, models, host) {
  const box = $("#gpus");
  box.replaceChildren();
  if (!gpus.length) box.append(el("div", { class: "panel empty", text: "No GPU accounting configured." }));
  for (const g of gpus) {
    const placed = models.filter((m) => HOLDS_MEMORY.has(m.state) && (m.gpus || []).includes(g.id));
    const total = g.vram_gb > 0 ? g.vram_gb : 1;
    // The status gives no sleeper's residual: what the GPU holds beyond the awake models is theirs.
    const awake = placed.filter((m) => m.state !== "sleeping");
    const sleepers = placed.length - awake.length;
    const residual = sleepers ? Math.max(0, g.used_gb - awake.reduce((a, m) => a + m.vram_gb, 0)) / sleepers : 0;
    const held = (m) => (m.state === "sleeping" ? residual : m.vram_gb);
    const listed = placed.reduce((a, m) => a + held(m), 0);
    // Segments come from the models; the GPU's own used_gb is the truth for the total.
    const scale = listed > g.used_gb && listed > 0 ? g.used_gb / listed : 1;
    const bar = el("div", { class: "bar", "data-field": "placed" });
    const legend = el("div", { class: "legend" });
    for (const m of placed) {
      const c = colorOf(m.name);
      const label = m.name + " " + gb(held(m)) + " GB" + (m.state === "sleeping" ? " asleep" : "");
      bar.append(el("i", { class: m.state === "sleeping" ? "asleep" : "", title: label, style: `width:${(100 * held(m) * scale) / total}%;background:${c}` }));
      legend.append(el("span", { "data-model": m.name }, el("span", { class: "sw", style: "background:" + c }), label));
    }
    const other = g.used_gb - listed * scale;
    if (other > 0.05) bar.append(el("i", { title: "other", style: `width:${(100 * other) / total}%;background:var(--grey)` }));
    if (!placed.length) legend.append("idle");
    const card = el("div", { class: "panel gpu", "data-gpu": String(g.id) },
      el("div", { class: "gpu-head" }, el("b", { text: "GPU " + g.id + (g.node ? " · " + g.node : "") }),
        el("span", { "data-field": "used", text: gb(g.used_gb) + " / " + gb(g.vram_gb) + " GB placed" })),
      bar, legend);
    if (g.driver_used_gb !== null && g.driver_used_gb !== undefined) {
      const pct = Math.min(100, (100 * g.driver_used_gb) / total);
      card.append(el("div", { class: "bar thin", title: "in use according to the driver" }, el("i", { style: `width:${pct}%` })),
        el("div", { class: "sub", "data-field": "driver", text: "driver reports " + gb(g.driver_used_gb) + " GB in use" }));
    }
    box.append(card);
  }
  if (host && host.total_gb > 0) {
    const pct = Math.min(100, (100 * host.used_gb) / host.total_gb);
    box.append(el("div", { class: "panel gpu", "data-host": "" },
      el("div", { class: "gpu-head" }, el("b", { text: "Host RAM" }),
        el("span", { "data-field": "host", text: gb(host.used_gb) + " / " + gb(host.total_gb) + " GB held by sleepers" })),
      el("div", { class: "bar" }, el("i", { style: `width:${pct}%;background:var(--blue)` })),
      el("div", { class: "legend", text: "weights of models asleep at level 1" })));
  }
}

// ---- models -----------------------------------------------------------
const FIELDS = ["name", "state", "gpus", "in_flight", "queued", "last_used", "start", "kv", "actions"];
function buildRow(name) {
  const tr = el("tr", { class: "model", "data-model": name });
  const cells = {};
  for (const f of FIELDS) {
    cells[f] = el("td", { "data-field": f });
    tr.append(cells[f]);
  }
  cells.in_flight.className = cells.queued.className = "num";
  cells.name.append(el("div", { class: "name mono", title: name, text: name }), el("div", { class: "sub" }),
    el("div", { class: "lora", "data-field": "adapters", hidden: true }));
  cells.state.append(el("span", { class: "badge" }));
  cells.actions.className = "actions";
  for (const action of ["load", "unload", "sleep"]) {
    const b = el("button", { type: "button", "data-action": action, "data-model": name, text: action[0].toUpperCase() + action.slice(1) });
    b.addEventListener("click", () => act(action, name));
    cells.actions.append(b);
  }
  const errRow = el("tr", { class: "error", "data-error-for": name }, el("td", { colSpan: FIELDS.length, "data-field": "error" }));
  return { tr, cells, errRow };
}
function countCell(cell, n, max) {
  cell.replaceChildren(el("span", { class: n > 0 && cell.dataset.field === "queued" ? "warn" : "", text: String(n) }),
    el("span", { class: "of", text: " / " + max }));
}
function updateRow(row, m) {
  const { tr, cells, errRow } = row;
  tr.dataset.state = m.state;
  const subBits = [];
  if (m.managed === false) subBits.push("external");
  if (m.pinned) subBits.push("pinned");
  if (m.aliases && m.aliases.length) subBits.push("aka " + m.aliases.join(", "));
  if (m.node) subBits.push("node " + m.node);
  if (m.sleep) subBits.push("sleep " + m.sleep);
  if (m.wake_check_failures) subBits.push(m.wake_check_failures + " wake checks failed");
  if (m.port) subBits.push(":" + m.port);
  if (m.pid) subBits.push("pid " + m.pid);
  const sub = cells.name.children[1];
  setText(sub, subBits.join(" · "));
  sub.title = subBits.join(" · ");
  renderAdapters(cells.name.children[2], m.adapters);
  const badge = cells.state.firstChild;
  badge.className = "badge s-" + m.state;
  setText(badge, m.state);
  cells.gpus.replaceChildren(...(m.gpus && m.gpus.length ? m.gpus.map((g) => el("span", { class: "chip", text: "GPU " + g })) : ["—"]));
  countCell(cells.in_flight, m.in_flight, m.max_concurrent);
  countCell(cells.queued, m.queued, m.max_queue);
  setText(cells.last_used, ago(m.last_used));
  cells.last_used.title = m.last_used ? new Date(m.last_used * 1000).toLocaleString() : "";
  setText(cells.start, startText(m));
  cells.start.title = m.state === "held" ? `${m.failed_starts} failed starts in a row: given up until POST /gateway/models/${m.name}/load` : "";
  const be = m.backend;
  // Numbers of a server that is no longer ready are stale.
  if (m.state === "ready" && be && be.kv_cache_usage_perc !== null && be.kv_cache_usage_perc !== undefined) {
    // vLLM reports the KV cache usage as a fraction (0..1).
    const pct = Math.max(0, Math.min(100, be.kv_cache_usage_perc * 100));
    cells.kv.replaceChildren(el("div", { class: "kv", title: `running ${be.num_requests_running ?? "?"}, waiting ${be.num_requests_waiting ?? "?"}` },
      el("div", { class: "bar" }, el("i", { style: `width:${pct}%` })), el("span", { text: pct.toFixed(0) + " %" })));
  } else {
    setText(cells.kv, "—");
  }
  const [loadBtn, unloadBtn, sleepBtn] = cells.actions.children;
  // A model given by url runs elsewhere: the gateway neither starts nor stops it.
  const managed = m.managed !== false;
  loadBtn.disabled = !managed || busy.has(m.name + "/load") || !CAN_LOAD.has(m.state);
  unloadBtn.disabled = !managed || busy.has(m.name + "/unload") || !CAN_UNLOAD.has(m.state);
  sleepBtn.hidden = !m.sleep;
  sleepBtn.disabled = !managed || busy.has(m.name + "/sleep") || m.state !== "ready";
  tr.classList.toggle("has-error", Boolean(m.error));
  const tries = m.failed_starts > 1 ? ` (${m.failed_starts} failed starts in a row)` : "";
  setText(errRow.firstChild, m.error ? "Error: " + m.error + tries : "");
}
// A base's LoRA adapters loaded in its server now (null: the model has none configured).
function renderAdapters(box, adapters) {
  box.hidden = !adapters;
  if (!adapters) return;
  const text = (a) => a.name + (a.in_flight ? " · " + a.in_flight + " in flight" : "");
  const chips = adapters.map((a) => el("span", { class: "chip", "data-adapter": a.name, title: "last used " + ago(a.last_used), text: text(a) }));
  box.replaceChildren("LoRA ", ...(chips.length ? chips : ["none loaded"]));
}
function startText(m) {
  const has = (v) => v !== null && v !== undefined;
  const expect = has(m.expected_load_s) ? " (~" + secs(m.expected_load_s) + ")" : "";
  if (m.state === "starting" && has(m.starting_for_s)) return "starting " + secs(m.starting_for_s) + expect;
  if (m.state === "waking") return "waking" + expect;
  if (m.state === "sleeping") return "asleep" + (has(m.asleep_for_s) ? " " + span(m.asleep_for_s) : "") + (m.sleep_level ? " · level " + m.sleep_level : "");
  if (m.state === "backoff" && has(m.retry_in_s)) return "retry in " + secs(m.retry_in_s);
  if (m.state === "held") return "held: POST …/load";
  const took = has(m.last_start_s) ? "took " + secs(m.last_start_s) : "—";
  return has(m.last_wake_s) ? took + " · woke in " + secs(m.last_wake_s) : took;
}
function renderModels(models) {
  const body = $("#models-body");
  const seen = new Set();
  let i = 0;
  for (const m of models) {
    seen.add(m.name);
    let row = rows.get(m.name);
    if (!row) { row = buildRow(m.name); rows.set(m.name, row); }
    updateRow(row, m);
    // Move rows only when out of order, so a button under the pointer stays put.
    const wanted = m.error ? [row.tr, row.errRow] : [row.tr];
    for (const node of wanted) {
      if (body.children[i] !== node) body.insertBefore(node, body.children[i] || null);
      i++;
    }
    if (!m.error) row.errRow.remove();
  }
  for (const [name, row] of rows) {
    if (!seen.has(name)) { row.tr.remove(); row.errRow.remove(); rows.delete(name); }
  }
  $("#models-empty").hidden = models.length > 0;
}
export function renderStatus(status) {
  const gpus = status.gpus || [];
  const models = status.models || [];
  renderGpus(gpus, models, status.host_memory);
  renderModels(models);
  const count = (s) => models.filter((m) => m.state === s).length;
  const bits = [models.length + " models", count("ready") + " ready"];
  for (const s of COUNTED) if (count(s)) bits.push(count(s) + " " + s);
  if (gpus.length) bits.unshift(gpus.length + (gpus.length === 1 ? " GPU" : " GPUs"));
  setText($("#summary"), bits.join(" · "));
}
