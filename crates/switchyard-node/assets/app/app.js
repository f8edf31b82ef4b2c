// The reference app's frontend. It is the `Frontend` component: every action is a message to
// the CPM through the gateway (x-source: frontend), HTTP for commands and queries, the
// WebSocket for status updates and results. No other API of the node is used.
"use strict";
const DOMAINS = ["staging", "quality", "analytics", "insight", "report", "recommendation"];
const $ = (s) => document.querySelector(s);
const state = { token: new URLSearchParams(location.search).get("token") || sessionStorage.getItem("frontend-token") || "",
  runs: [], current: null, detail: null, steps: {}, ws: null, starts: {} };

function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
function fmtMs(ms) { return ms == null ? "—" : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`; }
function fmtTime(ms) { return ms ? new Date(ms).toLocaleTimeString() : "—"; }
function num(v, d = 2) { return typeof v === "number" ? v.toFixed(d) : esc(v); }
function showError(msg) { const e = $("#error"); e.textContent = msg; e.hidden = !msg; }

function headers() {
  const h = { "content-type": "application/json", "x-source": "frontend" };
  if (state.token) h.authorization = "Bearer " + state.token;
  return h;
}
async function call(path, body) {
  let res;
  try { res = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) }); }
  catch (e) { throw new Error("the node is not reachable: " + e.message); }
  const j = await res.json().catch(() => ({}));
  if (res.status === 401) { $("#token-form").hidden = false; }
  if (!res.ok) {
    const k = j.error?.kind || res.status;
    if (k === "no_handler") throw new Error("The reference app is not running on this node (start it with `switchyard serve --demo`).");
    throw new Error(`${k}: ${j.error?.message || res.statusText}`);
  }
  return j;
}
// A query to the CPM (request/reply) and a command (event) to it.
const query = async (topic, payload) => (await call(`/v1/request/${topic}?timeout_ms=10000`, payload)).payload;
const tell = (topic, payload) => call(`/v1/publish/${topic}`, payload);

// ---- live updates over the WebSocket -------------------------------------------------------
function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/ws${state.token ? "?token=" + encodeURIComponent(state.token) : ""}`);
  state.ws = ws;
  const conn = $("#conn");
  ws.onopen = () => {
    conn.textContent = "live"; conn.className = "pill ok";
    ws.send(JSON.stringify({ op: "subscribe", id: "status", pattern: "*.status.update" }));
    ws.send(JSON.stringify({ op: "subscribe", id: "results", pattern: "cpm.pipeline.complete" }));
  };
  ws.onclose = () => { conn.textContent = "offline, reconnecting…"; conn.className = "pill bad"; setTimeout(connect, 2000); };
  ws.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.op === "error") { showError(`live updates: ${f.error.kind}: ${f.error.message}`); return; }
    if (f.op !== "message") return;
    const m = f.message, p = m.payload || {};
    // The open run's end: reload it. While its first load is still in flight (no detail yet),
    // reload too: that load may have read the run before it ended, and only the latest load
    // is shown (`loadSeq`), so the page never stays on "running".
    const openRun = () => state.current && (!state.detail || state.detail.run?.correlation_id === p.correlation_id);
    if (m.topic === "cpm.pipeline.complete" && p.error?.error_type === "RunIdInUse" && state.starts[p.correlation_id]) {
      delete state.starts[p.correlation_id];
      $("#start-status").textContent = "";
      showError(`Not started: ${p.error.message}. Choose another run id.`);
      return;
    }
    if (m.topic === "cpm.pipeline.complete") { loadRuns(); if (openRun()) loadRun(state.current, true); return; }
    if (p.role === "manager" && state.detail?.run?.correlation_id === p.correlation_id) {
      state.steps[p.domain] = p.to; renderSteps();
    }
    if (p.role === "cpm" && p.to === "cancelled" && openRun()) loadRun(state.current, true);
    if (p.role === "cpm" && p.domain === "cpm" && p.action === "pipeline" && state.runs.length) {
      const r = state.runs.find((x) => x.correlation_id === p.correlation_id);
      if (!r) loadRuns();
    }
  };
}

// ---- pipelines: start and history ----------------------------------------------------------
async function loadRuns() {
  try {
    const res = await query("cpm.query.runs", { limit: 50 });
    state.runs = res.runs; showError("");
    const tb = $("#runs tbody");
    tb.innerHTML = state.runs.map((r) => `<tr data-run="${esc(r.run_id)}">
      <td><a href="#/run/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a></td>
      <td>${esc(r.input)}${r.fail ? ` · fail ${esc(r.fail)}` : ""}${r.slow ? ` · slow ${esc(r.slow)}` : ""}</td>
      <td>${fmtTime(r.started_ms)}</td>
      <td class="num">${fmtMs(r.finished_ms ? r.finished_ms - r.started_ms : null)}</td>
      <td class="outcome-${esc(r.status)}">${esc(r.status)}${r.error ? ": " + esc(r.error.message) : ""}${perfBadge(r)}</td></tr>`).join("")
      || `<tr><td colspan="5" class="muted">No runs yet.</td></tr>`;
    $("#runs").hidden = false; $("#runs-loading").hidden = true;
  } catch (e) { $("#runs-loading").textContent = "Could not load the runs."; showError(e.message); }
}

async function startRun(ev) {
  ev.preventDefault();
  const btn = $("#start"), st = $("#start-status");
  const input = document.querySelector("input[name=input]:checked").value;
  const fail = $("#fail").value;
  const runId = $("#run-id").value.trim() || `ui-${Date.now().toString(36)}`;
  const req = { run_id: runId, dataset: "sales.csv" };
  try {
    btn.disabled = true; st.textContent = "Starting…";
    if (fail === "missing") req.dataset = "missing.csv";
    else if (input === "csv") {
      const file = $("#csv").files[0];
      if (!file) throw new Error("Choose a CSV file first.");
      req.csv = await file.text();
    } else req.rows = Math.max(1, parseInt($("#rows").value, 10) || 120);
    if (fail.startsWith("slow:")) req.slow = fail.slice(5);
    else if (fail.startsWith("hold:")) req.hold = fail.slice(5);
    else if (fail && fail !== "missing") req.fail = fail;
    const sent = await tell("cpm.pipeline.request", req);
    // A start the CPM refuses (a run with this id is under way) ends on its own result.
    if (sent?.correlation_id) state.starts[sent.correlation_id] = runId;
    st.textContent = `Run ${runId} started.`;
    location.hash = `#/run/${encodeURIComponent(runId)}`;
  } catch (e) { st.textContent = ""; showError(e.message); }
  finally { btn.disabled = false; }
}

// ---- one run -------------------------------------------------------------------------------
// The performance tracker's latency anomalies of a run (what the CPM's registry noted).
const flagsOf = (r) => r?.performance_anomalies || [];
function perfBadge(r) {
  const n = flagsOf(r).length;
  return n ? ` <span class="flag" title="latency anomalies">⚠ ${n} slow step${n > 1 ? "s" : ""}</span>` : "";
}
function ms(v) { return v >= 10 ? String(Math.round(v)) : v.toFixed(1); }
function flagText(f) { return `${f.component} ${f.action} took ${ms(f.value)} ms, baseline ${ms(f.mean)} ± ${ms(f.deviation)} ms`; }

function renderSteps() {
  const flags = flagsOf(state.detail?.run);
  $("#steps").innerHTML = DOMAINS.map((d) => {
    const s = state.steps[d] || "pending";
    const mine = flags.filter((f) => f.domain === d);
    const flag = mine.length ? ` <span class="flag" data-flag="${esc(d)}" title="${esc(mine.map(flagText).join("; "))}">⚠ slow</span>` : "";
    return `<li class="${esc(s)}${mine.length ? " slow" : ""}"><span class="visually">${esc(d)}</span>: <span data-step="${esc(d)}">${esc(s)}</span>${flag}</li>`;
  }).join("");
}

function renderPerformance(d) {
  const r = d.run, t = d.performance_tracker, flags = flagsOf(r);
  // Domains in pipeline order (the whole run last), each domain's layers bottom up.
  const LAYERS = ["processor", "handler", "service", "manager"];
  const order = (f) => { const i = DOMAINS.indexOf(f.domain); return (i < 0 ? DOMAINS.length : i) * 10 + LAYERS.findIndex((l) => f.component.endsWith("-" + l)); };
  const empty = $("#perf-empty"), list = $("#perf-flags");
  list.hidden = !flags.length; empty.hidden = !!flags.length;
  if (!t) empty.textContent = "The performance tracker is not running on this app.";
  else empty.textContent = `No step of this run left its latency baseline${r.status === "running" ? " so far" : ""}. A step is flagged when it is more than ${t.k} deviations and at least ${t.floor_ms} ms from the mean of its (component, action), once that baseline has ${t.warmup} samples.`;
  list.innerHTML = [...flags].sort((a, b) => order(a) - order(b)).map((f) =>
    `<li data-flag="${esc(f.component)}"><b>${esc(f.domain === "cpm" ? "whole run" : f.domain || f.component)}</b>: ${esc(flagText(f))}</li>`).join("");
}

let loadSeq = 0;
async function loadRun(runId, quiet) {
  const seq = ++loadSeq;
  state.current = runId;
  if (!quiet) { $("#run-loading").hidden = false; $("#run-loading").textContent = "Loading…"; $("#run-body").hidden = true; }
  $("#h-run").textContent = `Run ${runId}`;
  try {
    let d = await query("cpm.query.run", { run_id: runId, preview_rows: 20 });
    // A run just started may not be registered yet: the CPM gets the request first.
    for (let i = 0; !d.run && i < 10; i++) { await new Promise((r) => setTimeout(r, 200)); d = await query("cpm.query.run", { run_id: runId }); }
    // A newer load (the run ended meanwhile) wins over this one.
    if (state.current !== runId || seq !== loadSeq) return;
    if (!d.run) { $("#run-loading").textContent = `No run named ${runId}.`; return; }
    state.detail = d;
    const r = d.run;
    for (const [dom] of r.domains) state.steps[dom] = "completed";
    if (r.status === "failed") { const failed = DOMAINS.find((x) => !r.domains.some(([y]) => y === x)); if (failed) state.steps[failed] = "failed"; }
    renderSteps(); renderRun(d);
    $("#run-loading").hidden = true; $("#run-body").hidden = false; showError("");
  } catch (e) { $("#run-loading").textContent = "Could not load the run."; showError(e.message); }
}

// Asks the CPM to cancel the open run, then reloads it until it is no longer running.
async function cancelRun() {
  const btn = $("#cancel-run"), runId = state.current;
  try {
    btn.disabled = true;
    await tell("cpm.pipeline.cancel", { run_id: runId });
    for (let i = 0; i < 20 && state.current === runId; i++) {
      await loadRun(runId, true);
      if (state.detail?.run?.status !== "running") break;
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (e) { showError(e.message); }
  finally { btn.disabled = false; }
}

function renderRun(d) {
  const r = d.run;
  $("#cancel-run").hidden = r.status !== "running";
  const dur = r.finished_ms ? r.finished_ms - r.started_ms : null;
  $("#run-summary").innerHTML = `<span class="outcome-${esc(r.status)}" id="run-status">${esc(r.status)}</span> · input ${esc(r.input)} (${esc(r.dataset)}) · started ${fmtTime(r.started_ms)} · duration ${fmtMs(dur)} · correlation <code>${esc(r.correlation_id)}</code>`;
  const fail = $("#run-failure");
  fail.hidden = !r.error; fail.textContent = !r.error ? "" : r.status === "cancelled" ? "Cancelled by the frontend: no further step of this run is taken." : `Failed: ${r.error.error_type}: ${r.error.message}`;
  const dl = $("#dead-letters");
  dl.hidden = !r.dead_letters.length;
  dl.querySelector("tbody").innerHTML = r.dead_letters.map((x) => `<tr><td><code>${esc(x.id)}</code></td><td>${esc(x.topic)}</td><td>${esc(x.handler)}</td><td class="num">${x.attempts}</td><td>${esc(x.error)}</td></tr>`).join("");
  renderPerformance(d); renderData(d); renderInsights(d); renderReport(d);
}

function renderData(d) {
  const p = $("#panel-data");
  if (!d.staged) { p.innerHTML = `<p class="muted">Nothing staged for this run${d.run.status === "running" ? " yet" : ""}.</p>`; return; }
  const q = d.quality;
  let h = `<div class="figures"><div>rows staged<b id="n-staged">${d.staged.rows}</b></div>`;
  if (q) h += `<div>valid rows<b id="n-valid">${q.valid}</b></div><div>failed rows<b id="n-issues">${q.issues}</b></div>`;
  h += `</div>`;
  if (q) {
    h += `<h3>Quality checks</h3><table id="checks"><thead><tr><th scope="col">Check</th><th scope="col">Rule</th><th scope="col" class="num">Failed rows</th><th scope="col">Result</th></tr></thead><tbody>`
      + q.checks.map((c) => `<tr><td>${esc(c.description)}</td><td><code>${esc(c.rule)}</code></td><td class="num">${c.failed}</td><td class="${c.passed ? "pass" : "fail"}">${c.passed ? "passed" : "failed"}</td></tr>`).join("")
      + `</tbody></table><h3>Failed rows</h3>`
      + (q.failed_rows.length ? `<table id="failed-rows"><thead><tr><th scope="col" class="num">Line</th><th scope="col">Column</th><th scope="col">Rule</th><th scope="col">Value</th><th scope="col">Row</th></tr></thead><tbody>`
      + q.failed_rows.map((f) => `<tr><td class="num">${f.line}</td><td>${esc(f.column)}</td><td><code>${esc(f.rule)}</code></td><td>${esc(f.value)}</td><td><code>${esc(f.fields.join(","))}</code></td></tr>`).join("") + `</tbody></table>` : `<p>No failed rows.</p>`);
  } else h += `<p class="muted">Quality checks have not run${d.run.status === "running" ? " yet" : ""}.</p>`;
  h += `<h3>Staged rows (first ${d.staged.preview.length})</h3><table><thead><tr><th scope="col" class="num">Line</th>${d.staged.columns.map((c) => `<th scope="col">${esc(c)}</th>`).join("")}</tr></thead><tbody>`
    + d.staged.preview.map((r) => `<tr><td class="num">${r.line}</td>${d.staged.columns.map((_, i) => `<td>${esc(r.fields[i])}</td>`).join("")}</tr>`).join("") + `</tbody></table>`;
  p.innerHTML = h;
}

function renderInsights(d) {
  const p = $("#panel-insights");
  const f = d.features, ins = d.insights, recs = d.recommendations;
  if (!f && !ins) { p.innerHTML = `<p class="muted">No analytics for this run${d.run.status === "running" ? " yet" : ""}.</p>`; return; }
  let h = "";
  if (f) h += `<div class="figures"><div>total revenue<b id="n-revenue">${num(f.total_revenue)}</b></div><div>valid rows<b>${f.rows}</b></div><div>mean per row<b>${num(f.mean_row_revenue)}</b></div></div>
    <h3>Revenue by region</h3><table><tbody>${Object.entries(f.revenue_by_region).map(([k, v]) => `<tr><th scope="row">${esc(k)}</th><td class="num">${num(v)}</td></tr>`).join("")}</tbody></table>`;
  if (ins) h += `<h3>Insights</h3><p>Trend: <b id="trend">${esc(ins.trend)}</b> (${num(ins.trend_per_day)} per day)</p>
    <h3>Anomalies (|z| ≥ ${num(ins.z_threshold, 1)})</h3>` + (ins.anomalies.length ? `<table id="anomalies"><thead><tr><th scope="col">Day</th><th scope="col" class="num">Revenue</th><th scope="col" class="num">z</th></tr></thead><tbody>${ins.anomalies.map((a) => `<tr><td>day ${a.day + 1}</td><td class="num">${num(a.revenue)}</td><td class="num">${num(a.z)}</td></tr>`).join("")}</tbody></table>` : `<p>None.</p>`);
  h += `<h3>Recommendations</h3>` + (recs && recs.length ? `<ul id="recs">${recs.map((r) => `<li><b>[${esc(r.priority)}]</b> ${esc(r.action)} <span class="muted">(${esc(r.reason)})</span></li>`).join("")}</ul>` : `<p class="muted">None.</p>`);
  p.innerHTML = h;
}

// A small Markdown renderer for the report: headings, lists, tables, paragraphs.
function markdown(md) {
  const out = []; const lines = md.split("\n"); let i = 0;
  const inline = (s) => esc(s).replace(/\*\*(.+?)\*\*/g, "<b>$1</b>").replace(/`(.+?)`/g, "<code>$1</code>");
  while (i < lines.length) {
    const l = lines[i];
    if (/^#{1,6} /.test(l)) { const n = l.match(/^#+/)[0].length; out.push(`<h${n}>${inline(l.slice(n + 1))}</h${n}>`); i++; }
    else if (l.startsWith("|")) {
      const rows = []; while (i < lines.length && lines[i].startsWith("|")) rows.push(lines[i++]);
      const cells = (r) => r.replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      const body = rows.slice(2).map((r) => `<tr>${cells(r).map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`).join("");
      out.push(`<table><thead><tr>${cells(rows[0]).map((c) => `<th scope="col">${inline(c)}</th>`).join("")}</tr></thead><tbody>${body}</tbody></table>`);
    } else if (l.startsWith("- ")) {
      const items = []; while (i < lines.length && lines[i].startsWith("- ")) items.push(`<li>${inline(lines[i++].slice(2))}</li>`);
      out.push(`<ul>${items.join("")}</ul>`);
    } else if (l.trim()) { out.push(`<p>${inline(l)}</p>`); i++; } else i++;
  }
  return out.join("\n");
}

function download(name, type, text) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function renderReport(d) {
  const p = $("#panel-report"), rep = d.report;
  if (!rep.markdown) { p.innerHTML = `<p class="muted">No report for this run${d.run.status === "running" ? " yet" : ""}.</p>`; return; }
  p.innerHTML = `<p><button type="button" id="dl-md">Download Markdown</button> <button type="button" id="dl-csv" ${rep.csv ? "" : "disabled"}>Download CSV</button></p><article class="md" id="report">${markdown(rep.markdown)}</article>`;
  $("#dl-md").onclick = () => download(`report-${d.run.run_id}.md`, "text/markdown", rep.markdown);
  $("#dl-csv").onclick = () => download(`report-${d.run.run_id}.csv`, "text/csv", rep.csv);
}

// ---- tabs (arrow keys move between them) and routing ---------------------------------------
function selectTab(tab) {
  for (const t of document.querySelectorAll("[role=tab]")) {
    const on = t === tab; t.setAttribute("aria-selected", on); t.tabIndex = on ? 0 : -1;
    $("#" + t.getAttribute("aria-controls")).hidden = !on;
  }
}
function setupTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  tabs.forEach((t, i) => {
    t.onclick = () => selectTab(t);
    t.onkeydown = (e) => {
      const j = e.key === "ArrowRight" ? (i + 1) % tabs.length : e.key === "ArrowLeft" ? (i + tabs.length - 1) % tabs.length : -1;
      if (j >= 0) { e.preventDefault(); tabs[j].focus(); selectTab(tabs[j]); }
    };
  });
}

function route() {
  const m = location.hash.match(/^#\/run\/(.+)$/);
  $("#view-runs").hidden = !!m; $("#view-run").hidden = !m;
  if (m) {
    const runId = decodeURIComponent(m[1]);
    if (runId !== state.current) selectTab($("#tab-data"));
    state.steps = {}; state.detail = null; renderSteps(); loadRun(runId);
    $("#h-run").focus(); // keyboard and screen-reader users land on the run
  }
  else { state.current = null; loadRuns(); }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const r of document.querySelectorAll("input[name=input]")) r.onchange = () => {
    const csv = document.querySelector("input[name=input]:checked").value === "csv";
    $("#csv-row").hidden = !csv; $("#rows").disabled = csv;
  };
  $("#start-form").onsubmit = startRun;
  $("#cancel-run").onclick = cancelRun;
  $("#token-form").onsubmit = (e) => { e.preventDefault(); state.token = $("#token").value; sessionStorage.setItem("frontend-token", state.token); $("#token-form").hidden = true; state.ws?.close(); route(); };
  setupTabs(); connect();
  window.addEventListener("hashchange", route); route();
});
