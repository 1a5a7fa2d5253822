// The live page of a loadtest run: a table a second from /api/events, charts drawn as SVG here, controls
// that post to the JSON API. Loads nothing from anywhere else.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563"];
const LATENCY = [["p50", "#059669"], ["p90", "#d97706"], ["p99", "#dc2626"]];
const SVG = "http://www.w3.org/2000/svg";
const MAX_POINTS = 3600;
let series = [];  // one entry a second: {t, targets: {name: {rps, p50, p90, p99, level}}, aggregated}
let lastT = -1;
let built = "";
let state = "starting";

function api(path) {
  return token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
}

function say(text) {
  document.getElementById("message").textContent = text || "";
}

async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const answer = await fetch(path, { method: "POST", headers, body: body === undefined ? "" : JSON.stringify(body) });
    const doc = await answer.json().catch(() => ({}));
    say(answer.ok ? "" : (doc.error || "the server answered " + answer.status));
    return answer.ok;
  } catch (e) {
    say("the run's server did not answer: " + e);
    return false;
  }
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "number") return String(v);
  return v.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 1 : digits });
}

function cell(row, metric, value, digits) {
  const td = document.createElement("td");
  if (metric) td.dataset.metric = metric;
  td.textContent = fmt(value, digits);
  row.appendChild(td);
  return td;
}

function buildTable(doc) {
  const body = document.querySelector("#targets tbody");
  body.textContent = "";
  for (const t of doc.targets) {
    const row = document.createElement("tr");
    row.dataset.target = t.name;
    const name = document.createElement("td");
    name.textContent = t.name;
    row.appendChild(name);
    for (const m of ["requests", "failures", "rps", "p50_ms", "p99_ms"]) cell(row, m, null);
    const unit = t.model === "open" ? "rate" : "users";
    const steerable = unit in t;
    cell(row, steerable ? unit : null, null);
    const control = document.createElement("td");
    if (steerable) {
      const form = document.createElement("form");
      form.dataset.target = t.name;
      form.noValidate = true;  // the API judges the level and says what is wrong in its own words
      const input = document.createElement("input");
      input.type = "number";
      input.min = "0";
      input.step = unit === "rate" ? "any" : "1";
      input.name = unit;
      input.setAttribute("aria-label", t.name + " " + unit);
      const button = document.createElement("button");
      button.type = "submit";
      button.textContent = "Set " + unit;
      form.append(input, button);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const value = Number(input.value);
        if (input.value.trim() === "" || !Number.isFinite(value)) {
          say(unit + " must be a number");
          return;
        }
        post("/api/targets/" + encodeURIComponent(t.name), { [unit]: value });
      });
      control.appendChild(form);
    }
    row.appendChild(control);
    body.appendChild(row);
  }
  const foot = document.querySelector("#targets tfoot");
  foot.textContent = "";
  const row = document.createElement("tr");
  row.dataset.target = "Aggregated";
  const name = document.createElement("td");
  name.textContent = "Aggregated";
  row.appendChild(name);
  for (const m of ["requests", "failures", "rps", "p50_ms", "p99_ms"]) cell(row, m, null);
  row.append(document.createElement("td"), document.createElement("td"));
  foot.appendChild(row);
}

function fill(row, figures) {
  for (const td of row.querySelectorAll("td[data-metric]")) {
    const m = td.dataset.metric;
    td.textContent = fmt(figures[m], m === "requests" || m === "failures" || m === "users" ? 0 : m === "rps" || m === "rate" ? 1 : 3);
  }
}

function show(doc) {
  const shape = doc.targets.map((t) => t.name + ":" + t.model + ":" + ("users" in t || "rate" in t)).join(",");
  if (shape !== built) {
    buildTable(doc);
    built = shape;
  }
  state = doc.state;
  const stateBox = document.getElementById("state");
  stateBox.dataset.state = doc.state;
  stateBox.textContent = doc.state === "paused" && doc.elapsed_s === 0 ? "waiting to start" : doc.state;
  document.getElementById("elapsed").textContent = fmt(doc.elapsed_s, 0);
  for (const t of doc.targets) {
    const row = document.querySelector('#targets tbody tr[data-target="' + CSS.escape(t.name) + '"]');
    if (row) fill(row, t);
  }
  const agg = document.querySelector('#targets tfoot tr[data-target="Aggregated"]');
  if (agg) fill(agg, doc.aggregated);
  const over = doc.state === "done" || doc.state === "stopping";
  document.getElementById("pause").disabled = over || doc.state === "paused";
  const resume = document.getElementById("resume");
  resume.disabled = over || doc.state !== "paused";
  resume.textContent = doc.state === "paused" && doc.elapsed_s === 0 ? "Start" : "Resume";
  document.getElementById("stop").disabled = over;
  for (const input of document.querySelectorAll("#targets form button")) input.disabled = over;
  showFailures(doc.failures || []);
  showChanges(doc.level_changes || []);
  if (doc.result) showDone(doc);
}

function showFailures(rows) {
  const body = document.querySelector("#failures tbody");
  body.textContent = "";
  for (const f of rows) {
    const row = document.createElement("tr");
    cell(row, null, f.target);
    cell(row, null, f.kind);
    cell(row, null, f.message);
    cell(row, "failures", f.count, 0);
    cell(row, null, f.first_s, 3);
    cell(row, null, f.last_s, 3);
    body.appendChild(row);
  }
  document.getElementById("no-failures").hidden = rows.length > 0;
}

function showChanges(rows) {
  const body = document.querySelector("#changes tbody");
  body.textContent = "";
  for (const c of rows) {
    const row = document.createElement("tr");
    cell(row, null, c.at_s, 1);
    cell(row, null, c.target);
    cell(row, null, fmt(c.old, 2) + " " + c.unit);
    cell(row, null, fmt(c.new, 2) + " " + c.unit);
    cell(row, null, c.origin);
    body.appendChild(row);
  }
}

function showDone(doc) {
  const box = document.getElementById("done");
  box.hidden = false;
  const r = doc.result;
  document.getElementById("outcome").textContent = "Exit status " + r.exit_status +
    (r.stopped ? "; " + r.stopped : "") + ". Reports in " + r.run_dir + ".";
  const links = document.getElementById("links");
  links.textContent = "";
  for (const f of r.files) {
    const a = document.createElement("a");
    a.href = api(f.url);
    a.textContent = f.name;
    a.target = "_blank";
    a.rel = "noopener";
    links.appendChild(a);
  }
}

// -- charts: SVG drawn here -------------------------------------------------------------------------

const W = 520, H = 220, LEFT = 52, RIGHT = 10, TOP = 10, BOTTOM = 26;

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function draw(id, lines, marks) {
  const svg = document.getElementById(id);
  svg.textContent = "";
  const xs = series.map((p) => p.t);
  const x0 = 0, x1 = Math.max(1, xs.length ? xs[xs.length - 1] : 1);
  let top = 0;
  for (const l of lines) for (const [, y] of l.points) if (y > top) top = y;
  top = niceMax(top);
  const sx = (x) => LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
  const sy = (y) => H - BOTTOM - y / top * (H - TOP - BOTTOM);
  for (let i = 0; i <= 4; i++) {
    const y = top * i / 4;
    svg.appendChild(el("line", { x1: LEFT, x2: W - RIGHT, y1: sy(y), y2: sy(y), class: "grid" }));
    svg.appendChild(el("text", { x: LEFT - 4, y: sy(y) + 4, "text-anchor": "end" }, fmt(y, 2)));
  }
  for (let i = 0; i <= 4; i++) {
    const x = x0 + (x1 - x0) * i / 4;
    svg.appendChild(el("text", { x: sx(x), y: H - 8, "text-anchor": "middle" }, fmt(x, 0) + " s"));
  }
  for (const m of marks || []) {
    if (m >= x0 && m <= x1) svg.appendChild(el("line", { x1: sx(m), x2: sx(m), y1: TOP, y2: H - BOTTOM, class: "mark" }));
  }
  for (const l of lines) {
    if (!l.points.length) continue;
    const d = l.points.map(([x, y], i) => (i ? "L" : "M") + sx(x).toFixed(1) + " " + sy(y).toFixed(1)).join(" ");
    svg.appendChild(el("path", { d, fill: "none", stroke: l.color, "stroke-width": 1.8, "data-series": l.label }));
  }
  const legend = document.getElementById(id.replace("chart", "legend"));
  legend.textContent = "";
  for (const l of lines) {
    const s = document.createElement("span");
    const i = document.createElement("i");
    i.style.background = l.color;
    s.append(i, document.createTextNode(l.label));
    legend.appendChild(s);
  }
}

function points(name, key) {
  const out = [];
  for (const p of series) {
    const v = name === null ? p.aggregated && p.aggregated[key] : p.targets[name] && p.targets[name][key];
    if (v !== null && v !== undefined) out.push([p.t, v]);
  }
  return out;
}

function drawCharts(doc) {
  const names = doc.targets.map((t) => t.name);
  const marks = (doc.level_changes || []).map((c) => c.at_s);
  draw("chart-rps", names.map((n, i) => ({ label: n, color: COLORS[i % COLORS.length], points: points(n, "rps") })), marks);
  draw("chart-latency", LATENCY.map(([k, c]) => ({ label: k, color: c, points: points(null, k) })), marks);
  const steered = doc.targets.filter((t) => "users" in t || "rate" in t);
  draw("chart-level", steered.map((t) => ({ label: t.name + " (" + (t.model === "open" ? "rate" : "users") + ")",
    color: COLORS[names.indexOf(t.name) % COLORS.length], points: points(t.name, "level") })), marks);
}

// -- the event stream ---------------------------------------------------------------------------------

async function loadSeries() {
  try {
    const answer = await fetch(api("/api/series"));
    if (answer.ok) {
      series = await answer.json();
      lastT = series.length ? series[series.length - 1].t : -1;
    }
  } catch (e) { /* the stream will bring the next seconds */ }
}

function start() {
  document.getElementById("pause").addEventListener("click", () => post("/api/pause"));
  document.getElementById("resume").addEventListener("click", () => post("/api/resume"));
  document.getElementById("stop").addEventListener("click", () => post("/api/stop"));
  loadSeries();
  const events = new EventSource(api("/api/events"));
  let lastDoc = null;
  events.onmessage = (message) => {
    const doc = JSON.parse(message.data);
    lastDoc = doc;
    show(doc);
    if (doc.point && doc.point.t > lastT) {  // this second's figures for the charts
      series.push(doc.point);
      if (series.length > MAX_POINTS) series.shift();
      lastT = doc.point.t;
    }
    drawCharts(lastDoc);
    if (doc.state === "done") say("");
  };
  events.onerror = () => {
    if (state !== "done") say("the run's server is not answering (the run may have ended)");
  };
}

document.addEventListener("DOMContentLoaded", start);
