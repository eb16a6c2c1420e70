// The operator page: equipment, active alerts (Ack, Shelve), a chart per sensor.
// Plain JS, no libraries, nothing fetched from elsewhere. Live through /api/stream (SSE).
"use strict";

const S = {
  token: "",
  who: "",
  equipment: new Map(), // name -> /api/equipment item
  alerts: new Map(), // id -> /api/alerts item
  detail: null, // equipment name shown in detail
  series: new Map(), // "eq/sensor" -> {points: [[ms, v, anomaly]], unit, count}
  marks: [], // [{ms, sensor, kind, state}] of the detail equipment
  es: null,
  esKey: null,
  refreshTimer: 0,
  live: false,
};
const MAX_POINTS = 2000;
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ token
function initToken() {
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t !== null) { // as Jupyter: ?token= once, then kept for the session, off the URL
    sessionStorage.setItem("edge.token", t);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  S.token = sessionStorage.getItem("edge.token") || "";
  S.who = localStorage.getItem("edge.who") || "";
  $("who").value = S.who;
  $("token").value = "";
  showAuth();
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const tok = $("token").value.trim();
    if (tok) { S.token = tok; sessionStorage.setItem("edge.token", tok); }
    S.who = $("who").value.trim();
    localStorage.setItem("edge.who", S.who);
    $("token").value = "";
    showAuth();
    reconnect(true);
    loadAll();
  });
}

function showAuth() {
  $("auth").textContent = S.token ? "token set" : "no token: read only";
}

// -------------------------------------------------------------------- api
async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (S.token) headers.Authorization = "Bearer " + S.token;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method: opts.method || "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    cache: "no-store",
  });
  let doc = null;
  try { doc = await resp.json(); } catch (e) { doc = null; }
  if (!resp.ok) {
    const msg = (doc && doc.error) || resp.status + " " + resp.statusText;
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return doc;
}

function toast(msg, error = false) {
  const d = document.createElement("div");
  d.textContent = msg;
  if (error) d.className = "error";
  $("toast").appendChild(d);
  setTimeout(() => d.remove(), 5000);
}

// ------------------------------------------------------------------- load
async function loadAll() {
  try {
    const [eq, al] = await Promise.all([api("/api/equipment"), api("/api/alerts?limit=1000")]);
    S.equipment = new Map(eq.map((e) => [e.equipment, e]));
    S.alerts = new Map(al.map((a) => [a.id, a]));
    renderAlerts();
    renderEquipment();
    if (S.detail) renderDetailHead();
  } catch (e) {
    if (e.status === 401) toast("This gateway needs the API token to show data: enter it above.", true);
    else toast("Could not load: " + e.message, true);
  }
}

function scheduleRefresh(ms = 400) {
  if (S.refreshTimer) return;
  S.refreshTimer = setTimeout(() => { S.refreshTimer = 0; loadAll(); }, ms);
}

// ----------------------------------------------------------------- format
function fmtValue(v) {
  if (v === null || v === undefined) return "–";
  const n = Number(v);
  if (!isFinite(n)) return String(v);
  return Math.abs(n) >= 1e5 || (Math.abs(n) < 1e-3 && n !== 0) ? n.toExponential(2) : String(+n.toPrecision(5));
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s ago";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
  return Math.floor(s / 86400) + " d ago";
}

function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ----------------------------------------------------------------- alerts
const PRIO = { critical: 4, high: 3, medium: 2, low: 1 };

function renderAlerts() {
  const body = $("alerts").querySelector("tbody");
  const list = [...S.alerts.values()].filter((a) => a.state !== "cleared");
  list.sort((a, b) => (PRIO[b.priority] || 0) - (PRIO[a.priority] || 0) ||
    Date.parse(b.raised_at) - Date.parse(a.raised_at));
  body.replaceChildren();
  for (const a of list) {
    const tr = el("tr");
    tr.dataset.id = a.id;
    tr.dataset.state = a.state;
    if (a.shelved) tr.classList.add("shelved");
    const p = el("td");
    p.appendChild(el("span", "prio " + (a.priority || a.severity), a.priority || a.severity));
    tr.appendChild(p);
    tr.appendChild(el("td", "state " + a.state, a.state + (a.shelved ? " (shelved)" : "")));
    const who = el("td");
    const link = el("a", "", a.equipment + (a.sensor ? " / " + a.sensor : ""));
    link.href = "#eq=" + encodeURIComponent(a.equipment);
    who.appendChild(link);
    tr.appendChild(who);
    tr.appendChild(el("td", "", a.kind));
    const since = el("td", "since", ago(a.raised_at));
    since.title = a.raised_at;
    tr.appendChild(since);
    tr.appendChild(el("td", "", fmtValue(a.value)));
    tr.appendChild(el("td", "msg", a.message));
    const act = el("td", "actions");
    if (a.state !== "acknowledged") {
      const b = el("button", "ack", "Ack");
      b.type = "button";
      b.addEventListener("click", () => ack(a));
      act.appendChild(b);
    }
    const sb = el("button", "shelve", a.shelved ? "Unshelve" : "Shelve");
    sb.type = "button";
    sb.addEventListener("click", () => (a.shelved ? unshelve(a) : askShelve(a)));
    act.appendChild(sb);
    tr.appendChild(act);
    body.appendChild(tr);
  }
  $("alert-count").textContent = String(list.length);
  $("no-alerts").hidden = list.length > 0;
  renderSummary();
}

function byName() {
  return S.who || "operator";
}

async function command(a, name, body) {
  if (!S.token) { toast("Enter the API token above to " + name + ".", true); return false; }
  try {
    await api("/api/alerts/" + encodeURIComponent(a.id) + "/" + name, { method: "POST", body });
    return true;
  } catch (e) {
    toast(name + " " + a.equipment + "/" + a.sensor + ": " + e.message, true);
    return false;
  }
}

async function ack(a) {
  if (await command(a, "ack", { by: byName() })) toast("Acknowledged " + a.equipment + " " + a.kind);
}

async function unshelve(a) {
  if (await command(a, "unshelve", { by: byName() })) { toast("Unshelved " + a.equipment); scheduleRefresh(100); }
}

let shelving = null;
function askShelve(a) {
  shelving = a;
  $("shelve-what").textContent = a.equipment + " / " + a.sensor + " " + a.kind;
  $("shelve-reason").value = "";
  $("shelve-dialog").showModal();
  $("shelve-reason").focus();
}

function initShelve() {
  $("shelve-cancel").addEventListener("click", () => $("shelve-dialog").close());
  $("shelve-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const reason = $("shelve-reason").value.trim();
    if (!reason || !shelving) return;
    const a = shelving;
    $("shelve-dialog").close();
    const body = { by: byName(), reason, duration_s: Number($("shelve-duration").value) };
    if (await command(a, "shelve", body)) { toast("Shelved " + a.equipment + " " + a.kind); scheduleRefresh(100); }
  });
}

// -------------------------------------------------------------- equipment
function renderSummary() {
  let on = 0, off = 0, bad = 0;
  for (const e of S.equipment.values()) {
    if (e.status === "offline") off++; else if (e.status === "online") on++; else bad++;
  }
  $("summary").textContent = `${on} online · ${bad} anomaly · ${off} offline · ${$("alert-count").textContent} alerts`;
}

function renderEquipment() {
  const lines = new Map();
  for (const e of S.equipment.values()) {
    const k = e.line || "(no line)";
    if (!lines.has(k)) lines.set(k, []);
    lines.get(k).push(e);
  }
  const root = $("lines");
  root.replaceChildren();
  for (const name of [...lines.keys()].sort()) {
    const sec = el("div", "line");
    sec.appendChild(el("h3", "", name));
    const cards = el("div", "cards");
    for (const e of lines.get(name)) {
      const c = el("div", "card " + e.status);
      c.dataset.equipment = e.equipment;
      c.appendChild(el("div", "name", e.equipment));
      const alerts = e.active_alerts ? ` · ${e.active_alerts} alert${e.active_alerts > 1 ? "s" : ""}` : "";
      c.appendChild(el("div", "meta", `${e.status} · ${ago(e.last_seen)}${alerts}`));
      const vals = el("div", "vals");
      for (const [s, v] of Object.entries(e.sensors)) {
        vals.appendChild(el("span", v.anomaly ? "anom" : "", `${s} ${fmtValue(v.value)}${v.unit ? " " + v.unit : ""}`));
      }
      c.appendChild(vals);
      c.addEventListener("click", () => { location.hash = "eq=" + encodeURIComponent(e.equipment); });
      cards.appendChild(c);
    }
    sec.appendChild(cards);
    root.appendChild(sec);
  }
  $("eq-count").textContent = String(S.equipment.size);
  renderSummary();
}

// ----------------------------------------------------------------- detail
function route() {
  const m = location.hash.match(/^#eq=(.+)$/);
  const name = m ? decodeURIComponent(m[1]) : null;
  if (name === S.detail) return;
  S.detail = name;
  $("overview").hidden = !!name;
  $("detail").hidden = !name;
  S.series = new Map();
  S.marks = [];
  $("charts").replaceChildren();
  if (name) openDetail(name);
  reconnect();
}

function detailSensors() {
  const e = S.equipment.get(S.detail);
  return e ? Object.keys(e.sensors).sort() : [];
}

function renderDetailHead() {
  const e = S.equipment.get(S.detail);
  $("detail-name").textContent = S.detail;
  const st = $("detail-status");
  st.textContent = e ? e.status : "unknown";
  st.className = "badge " + (e ? e.status : "");
  $("detail-meta").textContent = e
    ? `line ${e.line || "–"} · last seen ${ago(e.last_seen)} · ${e.active_alerts} active alert(s)`
    : "not seen yet";
}

async function openDetail(name) {
  if (!S.equipment.size) await loadAll();
  renderDetailHead();
  const sensors = detailSensors();
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const jobs = sensors.map(async (s) => {
    try {
      const d = await api(`/api/series/${encodeURIComponent(name)}/${encodeURIComponent(s)}`);
      S.series.set(name + "/" + s, { points: d.points, unit: d.unit, count: d.count });
    } catch (e) { S.series.set(name + "/" + s, { points: [], unit: "", count: 0 }); }
  });
  const hist = api(`/api/alerts/history?equipment=${encodeURIComponent(name)}&from=${since}&limit=1000`)
    .then((rows) => { for (const a of rows) addMark(a); })
    .catch(() => {});
  await Promise.all([...jobs, hist]);
  for (const a of S.alerts.values()) if (a.equipment === name) addMark(a);
  if (S.detail !== name) return;
  reconnect();
  renderCharts();
}

function addMark(a) {
  // raised: a red mark; cleared or returned (to normal): a green one
  if (a.state !== "raised" && a.state !== "cleared" && a.state !== "returned") return;
  const ms = Date.parse(a.ts);
  if (!isFinite(ms)) return;
  if (S.marks.some((m) => m.id === a.id && m.state === a.state && m.ms === ms)) return;
  S.marks.push({ id: a.id, ms, sensor: a.sensor, kind: a.kind, state: a.state });
}

const W = 600, H = 190, PAD_L = 52, PAD_R = 8, PAD_T = 8, PAD_B = 22;
const NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderCharts() {
  const root = $("charts");
  const sensors = detailSensors();
  for (const s of sensors) {
    const key = S.detail + "/" + s;
    let box = root.querySelector(`[data-series="${CSS.escape(key)}"]`);
    if (!box) {
      box = el("div", "chart");
      box.dataset.series = key;
      const h = el("h4");
      h.appendChild(el("span", "", s));
      h.appendChild(el("span", "muted now", ""));
      box.appendChild(h);
      root.appendChild(box);
    }
    drawChart(box, s, S.series.get(key) || { points: [], unit: "" });
  }
}

function drawChart(box, sensor, data) {
  const pts = data.points;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": sensor });
  const last = pts.length ? pts[pts.length - 1] : null;
  box.querySelector(".now").textContent = last ? `${fmtValue(last[1])} ${data.unit || ""}` : "no readings";
  const x0 = PAD_L, x1 = W - PAD_R, y0 = PAD_T, y1 = H - PAD_B;
  svg.appendChild(svgEl("line", { class: "axis", x1: x0, y1: y1, x2: x1, y2: y1 }));
  svg.appendChild(svgEl("line", { class: "axis", x1: x0, y1: y0, x2: x0, y2: y1 }));
  if (pts.length) {
    let tMin = pts[0][0], tMax = Math.max(pts[pts.length - 1][0], tMin + 1000);
    let vMin = Infinity, vMax = -Infinity;
    for (const p of pts) { if (p[1] !== null) { vMin = Math.min(vMin, p[1]); vMax = Math.max(vMax, p[1]); } }
    if (!isFinite(vMin)) { vMin = 0; vMax = 1; }
    if (vMax - vMin < 1e-9) { vMin -= 1; vMax += 1; }
    const span = vMax - vMin;
    vMin -= span * 0.08; vMax += span * 0.08;
    const X = (t) => x0 + ((t - tMin) / (tMax - tMin)) * (x1 - x0);
    const Y = (v) => y1 - ((v - vMin) / (vMax - vMin)) * (y1 - y0);
    for (const m of S.marks) {
      if (m.ms < tMin || m.ms > tMax) continue;
      if (m.sensor && m.sensor !== sensor && detailSensors().includes(m.sensor)) continue;
      const x = X(m.ms);
      const line = svgEl("line", { class: m.state === "raised" ? "raise" : "clear", x1: x, y1: y0, x2: x, y2: y1 });
      line.appendChild(svgEl("title", {}, `${m.kind} ${m.state} ${clock(m.ms)}`));
      svg.appendChild(line);
    }
    const d = pts.filter((p) => p[1] !== null).map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    svg.appendChild(svgEl("path", { class: "series", d }));
    for (const p of pts) {
      if (!p[2] || p[1] === null) continue;
      const x = X(p[0]), y = Y(p[1]);
      const tri = svgEl("path", { class: "anomaly", d: `M${x.toFixed(1)},${(y - 5).toFixed(1)}l4.5,8h-9z` });
      tri.appendChild(svgEl("title", {}, `anomaly ${fmtValue(p[1])} at ${clock(p[0])}`));
      svg.appendChild(tri);
    }
    svg.appendChild(svgEl("text", { class: "lbl", x: x0 - 4, y: y0 + 8, "text-anchor": "end" }, fmtValue(vMax)));
    svg.appendChild(svgEl("text", { class: "lbl", x: x0 - 4, y: y1, "text-anchor": "end" }, fmtValue(vMin)));
    svg.appendChild(svgEl("text", { class: "lbl", x: x0, y: H - 5 }, clock(tMin)));
    svg.appendChild(svgEl("text", { class: "lbl", x: x1, y: H - 5, "text-anchor": "end" }, clock(tMax)));
  }
  const old = box.querySelector("svg");
  if (old) old.replaceWith(svg); else box.appendChild(svg);
}

// ----------------------------------------------------------------- stream
function reconnect(force = false) {
  const series = S.detail ? detailSensors().map((s) => S.detail + "/" + s) : [];
  const key = series.join(",") + "|" + S.token;
  if (!force && S.es && S.esKey === key) return;
  if (S.es) S.es.close();
  const params = new URLSearchParams();
  if (series.length) params.set("series", series.slice(0, 64).join(","));
  if (S.token) params.set("token", S.token);
  const es = new EventSource("/api/stream" + (params.toString() ? "?" + params : ""));
  S.es = es;
  S.esKey = key;
  es.addEventListener("open", () => { setLive(true); scheduleRefresh(50); });
  es.addEventListener("error", () => setLive(false));
  es.addEventListener("alert", (ev) => onAlert(JSON.parse(ev.data)));
  es.addEventListener("status", (ev) => onStatus(JSON.parse(ev.data)));
  es.addEventListener("reading", (ev) => onReading(JSON.parse(ev.data)));
  es.addEventListener("command", () => scheduleRefresh(100));
  es.addEventListener("resync", () => scheduleRefresh(50));
}

function setLive(up) {
  S.live = up;
  const c = $("conn");
  c.textContent = up ? "live" : "reconnecting…";
  c.className = "conn " + (up ? "up" : "down");
}

function onAlert(a) {
  if (a.state === "cleared") S.alerts.delete(a.id);
  else S.alerts.set(a.id, a);
  renderAlerts();
  if (S.detail === a.equipment) { addMark(a); renderCharts(); }
  scheduleRefresh(800); // equipment counts, statuses
}

function onStatus(s) {
  const e = S.equipment.get(s.equipment);
  if (e) { e.status = s.status; e.last_seen = s.last_seen; renderEquipment(); }
  else scheduleRefresh(200);
  if (S.detail === s.equipment) renderDetailHead();
}

function onReading(r) {
  const key = r.equipment + "/" + r.sensor;
  const cur = S.series.get(key) || { points: [], unit: "", count: 0 };
  cur.points = cur.points.concat(r.points).slice(-MAX_POINTS);
  cur.count = r.count;
  S.series.set(key, cur);
  if (S.detail === r.equipment) renderCharts();
}

// ------------------------------------------------------------------- main
function main() {
  initToken();
  initShelve();
  $("back").addEventListener("click", () => { location.hash = ""; });
  window.addEventListener("hashchange", route);
  loadAll().then(route);
  reconnect();
  setInterval(() => { if (!document.hidden) loadAll(); }, 5000); // last seen, values
}

document.addEventListener("DOMContentLoaded", main);
