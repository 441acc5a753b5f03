// ringkv status page: polls /status.json once a second and draws it (docs/observability.md,
// "The status page"). Plain JavaScript, no library, nothing fetched from elsewhere.
"use strict";

const POLL_MS = 1000;
const FETCH_MS = 4000;      // a poll that has no answer by then counts as failed
const STALE_S = 3;          // a snapshot unchanged this long is flagged (the node's loop is stuck)
const SVGNS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f", "#d62728", "#393b79", "#637939", "#8c6d31", "#843c39"];

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function cell(row, text, cls) {
  const td = el("td", cls ? { class: cls } : {}, text);
  row.appendChild(td);
  return td;
}

function fmtUs(us) {
  if (us === null || us === undefined) return "–";
  if (us >= 1e6) return (us / 1e6).toFixed(2) + " s";
  if (us >= 1e3) return (us / 1e3).toFixed(2) + " ms";
  return us.toFixed(0) + " µs";
}

function fmtBytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function colourOf(i) { return PALETTE[i % PALETTE.length]; }

// ---- members ---------------------------------------------------------------------------

function drawMembers(s) {
  const body = $("members").tBodies[0];
  body.replaceChildren();
  const counts = {};
  for (const m of s.members) {
    counts[m.state] = (counts[m.state] || 0) + 1;
    const tr = el("tr", { "data-member": m.name, "data-state": m.state,
                          class: m.self ? "self" : "" });
    cell(tr, m.name + (m.self ? " (this node)" : ""));
    const st = cell(tr, "");
    st.appendChild(el("span", { class: "badge " + m.state }, m.state));
    if (!m.routable && m.state === "up") {
      st.appendChild(el("span", { class: "note" }, " not routable"));
    }
    cell(tr, m.zone === null ? "–" : m.zone);
    cell(tr, m.status === null ? "–" : m.status + (m.in_ring ? "" : " (not in ring)"));
    cell(tr, m.partitions, "num");
    cell(tr, m.heartbeat_age_s === null ? "–" : m.heartbeat_age_s.toFixed(1) + " s", "num");
    cell(tr, m.phi === null ? "–" : m.phi.toFixed(1), "num");
    body.appendChild(tr);
  }
  const parts = Object.entries(counts).sort().map(([k, v]) => v + " " + k);
  const summary = $("members-summary");
  summary.textContent = s.members.length + " members: " + parts.join(", ");
  summary.dataset.up = counts.up || 0;
  summary.dataset.down = counts.down || 0;
}

// ---- the ring: one circle of partitions per replica (outer: the owner) ----------------------

function sector(r0, r1, a0, a1) {
  const p = (r, a) => (r * Math.sin(a)).toFixed(2) + " " + (-r * Math.cos(a)).toFixed(2);
  const large = a1 - a0 > Math.PI ? 1 : 0;
  return "M" + p(r1, a0) + " A" + r1 + " " + r1 + " 0 " + large + " 1 " + p(r1, a1) +
         " L" + p(r0, a1) + " A" + r0 + " " + r0 + " 0 " + large + " 0 " + p(r0, a0) + " Z";
}

let ringDrawn = null;       // the ring part last drawn, and the states it was drawn with

function drawRing(s) {
  const ring = s.ring;
  const svg = $("ring");
  const legend = $("legend");
  if (!ring) { svg.replaceChildren(); legend.replaceChildren(); return; }
  const state = {};
  for (const m of s.members) state[m.name] = m.state;
  const key = JSON.stringify([ring.epoch, ring.nodes, ring.nodes.map((n) => state[n])]);
  if (ringDrawn === key) return;
  ringDrawn = key;
  svg.replaceChildren();
  const q = ring.q, layers = Math.max(1, ring.preflists.length ? ring.preflists[0].length : 1);
  const outer = 100, inner = 40, width = (outer - inner) / layers;
  const step = 2 * Math.PI / q;
  for (let p = 0; p < q; p++) {
    const prefs = ring.preflists[p];
    for (let j = 0; j < prefs.length; j++) {
      const who = ring.nodes[prefs[j]];
      const down = state[who] === "down";
      const path = el("svg:path", {
        d: sector(outer - (j + 1) * width, outer - j * width - 0.5, p * step, (p + 1) * step),
        fill: colourOf(prefs[j]), "fill-opacity": down ? 0.25 : (j === 0 ? 1 : 0.6),
        stroke: down ? "#c62828" : "#fff", "stroke-width": 0.3, "data-partition": p,
        "data-owner": who });
      path.appendChild(el("svg:title", {}, "partition " + p + ": " +
        prefs.map((i) => ring.nodes[i]).join(", ")));
      svg.appendChild(path);
    }
  }
  svg.appendChild(el("svg:text", { x: 0, y: -4, "text-anchor": "middle", "font-size": 11 },
                     "Q=" + q + ", N=" + ring.n));
  svg.appendChild(el("svg:text", { x: 0, y: 10, "text-anchor": "middle", "font-size": 9,
                                   fill: "#666" }, "epoch " + ring.epoch));
  legend.replaceChildren();
  const owned = {};
  for (const o of ring.owners) owned[o] = (owned[o] || 0) + 1;
  ring.nodes.forEach((n, i) => {
    const li = el("li", { class: state[n] === "down" ? "down" : "" });
    li.appendChild(el("span", { class: "swatch", style: "background:" + colourOf(i) }));
    li.appendChild(document.createTextNode(n + " (" + (owned[i] || 0) + ")"));
    legend.appendChild(li);
  });
}

// ---- throughput and latency charts ------------------------------------------------------

function polyline(svg, pts, colour, fill) {
  if (!pts.length) return;
  if (pts.length === 1) pts = [[pts[0][0] - 1.5, pts[0][1]], [pts[0][0] + 1.5, pts[0][1]]];
  const d = pts.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" ");
  if (fill) {
    const first = pts[0][0].toFixed(1), last = pts[pts.length - 1][0].toFixed(1);
    svg.appendChild(el("svg:polygon", { points: first + ",120 " + d + " " + last + ",120",
                                        fill: colour, "fill-opacity": 0.2, stroke: "none" }));
  }
  svg.appendChild(el("svg:polyline", { points: d, fill: "none", stroke: colour, "stroke-width": 1.5,
                                       "vector-effect": "non-scaling-stroke" }));
}

function label(svg, x, y, text) {
  svg.appendChild(el("svg:text", { x: x, y: y, "font-size": 10, fill: "#666" }, text));
}

function drawTraffic(s) {
  const t = s.throughput;
  const n = t.t.length;
  const last = n ? n - 1 : -1;
  const rps = last >= 0 ? t.rps[last] : 0;
  $("rps").textContent = rps.toLocaleString();
  $("rps").dataset.rps = rps;
  $("p50").textContent = last >= 0 ? fmtUs(t.p50_us[last]) : "–";
  $("p99").textContent = last >= 0 ? fmtUs(t.p99_us[last]) : "–";
  $("span").textContent = n ? Math.round(t.t[last] - t.t[0]) : 0;
  // the window: the history kept, at least a minute (the first points do not fill it all)
  const span = n ? Math.min(300, Math.max(60, t.t[last] - t.t[0])) : 60;
  const t0 = n ? t.t[last] - span : 0;
  const xOf = (ti) => Math.max(0, (ti - t0) / span * 600);

  const chart = $("rps-chart");
  chart.replaceChildren();
  const top = Math.max(1, ...t.rps) * 1.1;
  polyline(chart, t.t.map((ti, i) => [xOf(ti), 118 - t.rps[i] / top * 110]), "#2e7d32", true);
  label(chart, 4, 12, Math.round(top).toLocaleString() + " /s");

  const lat = $("lat-chart");
  lat.replaceChildren();
  const vals = t.p99_us.concat(t.p50_us).filter((v) => v);
  const lo = Math.log10(Math.max(1, Math.min(...vals, 100) / 2));
  const hi = Math.log10(Math.max(...vals, 1000) * 2);
  const yOf = (v) => 118 - (Math.log10(v) - lo) / (hi - lo) * 110;
  for (const [key, colour] of [["p50_us", "#1565c0"], ["p99_us", "#ad1457"]]) {
    // a second without requests has no latency: break the line there
    let run = [];
    t.t.forEach((ti, i) => {
      const v = t[key][i];
      if (v) { run.push([xOf(ti), yOf(v)]); } else { polyline(lat, run, colour); run = []; }
    });
    polyline(lat, run, colour);
  }
  label(lat, 4, 12, fmtUs(Math.pow(10, hi)));
  label(lat, 4, 116, fmtUs(Math.pow(10, lo)));
}

// ---- transfers and hints ----------------------------------------------------------------

function drawTransfers(s) {
  const x = s.transfers;
  const body = $("transfers").tBodies[0];
  body.replaceChildren();
  const rows = x.pending.concat(x.sending.map((r) => Object.assign({ state: "sending here" }, r)));
  for (const r of rows) {
    const tr = el("tr", { "data-partition": r.partition });
    cell(tr, r.partition, "num");
    cell(tr, r.to);
    cell(tr, r.state);
    cell(tr, r.source || "–");
    cell(tr, r.keys, "num");
    cell(tr, fmtBytes(r.bytes), "num");
    body.appendChild(tr);
  }
  const summary = $("transfers-summary");
  summary.dataset.pending = x.pending.length;
  summary.textContent = x.moving
    ? "ring moving to epoch " + x.epoch + ": " + x.pending.length + " transfers"
    : "no ring change in progress" + (x.sending.length ? "" : "; nothing sent from here");
  const hints = $("hints").tBodies[0];
  hints.replaceChildren();
  for (const [target, count] of Object.entries(x.hints_pending)) {
    const tr = el("tr", { "data-target": target });
    cell(tr, target);
    cell(tr, count, "num");
    hints.appendChild(tr);
  }
  if (!Object.keys(x.hints_pending).length) {
    const tr = el("tr");
    cell(tr, "none");
    cell(tr, "");
    hints.appendChild(tr);
  }
}

// ---- polling ----------------------------------------------------------------------------

let lastGood = null;
let changedAt = 0;          // this browser's clock when the snapshot's time last moved on

function freshness(error) {
  const fresh = $("fresh");
  if (!lastGood) { fresh.textContent = error || "waiting for /status.json"; return; }
  // measured on one clock (the browser's), so a skew between it and the node's is no matter
  const age = Math.max(0, (Date.now() - changedAt) / 1000);
  fresh.dataset.age = age.toFixed(1);
  const stale = error || age > STALE_S;
  fresh.className = stale ? "stale" : "";
  fresh.textContent = (error ? error + "; " : "") + "snapshot of " +
    new Date(lastGood.time * 1000).toLocaleTimeString() + (stale ? " (stale)" : "");
}

function draw(s) {
  $("node").textContent = s.node;
  $("epoch").textContent = s.ring_epoch === null ? "–" : s.ring_epoch;
  document.title = "ringkv " + s.node;
  drawMembers(s);
  drawRing(s);
  drawTraffic(s);
  drawTransfers(s);
  document.body.dataset.loaded = "1";
}

async function poll() {
  let error = null;
  try {
    // a stopped node accepts the connection and never answers: give up after a while
    const r = await fetch("status.json",
                          { cache: "no-store", signal: AbortSignal.timeout(FETCH_MS) });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    if (!lastGood || s.time !== lastGood.time) changedAt = Date.now();
    lastGood = s;
    draw(s);
  } catch (e) {
    error = "cannot reach the node (" + e.message + ")";
  }
  freshness(error);
  setTimeout(poll, POLL_MS);
}

poll();
