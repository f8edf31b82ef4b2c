// switchyard dashboard: plain JS; the one library is uPlot (vendored) for the chart. Every
// figure comes from the node's admin API: the live stream /v1/stream, the 15-minute history
// /v1/stats/history, and the REST endpoints each view loads.
"use strict";
(() => {
  const TOKEN_KEY = "switchyard-token";
  const HISTORY_S = 15 * 60;
  const $ = (sel, root = document) => root.querySelector(sel);

  // --- DOM helper: el("td", {class: "r"}, "text", child...) (text is never parsed as HTML)
  function el(tag, attrs, ...kids) {
    const svg = ["svg", "g", "rect", "text", "path", "polyline", "line", "title", "circle", "marker", "defs"].includes(tag);
    const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const k of kids.flat(Infinity)) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  const fmt = (n) => (n === null || n === undefined || Number.isNaN(n)) ? "–"
    : Math.abs(n) >= 100 || Number.isInteger(n) ? Math.round(n).toLocaleString("en") : n.toFixed(1);

  // --- API with the admin token (sessionStorage) as Bearer; 401/403 open the login dialog.
  class ApiError extends Error { constructor(status, kind, message) { super(message); this.status = status; this.kind = kind; } }
  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
    const res = await fetch(path, { method: opts.method || "GET", headers, body: opts.body, cache: "no-store" });
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
    if (!res.ok) {
      const err = body && body.error ? body.error : { kind: "http_" + res.status, message: String(text).slice(0, 200) };
      if (res.status === 401 || res.status === 403) askToken(err.message);
      throw new ApiError(res.status, err.kind, err.message);
    }
    return body;
  }
  // Sign-in: the dialog opens on the first 401/403; a refused token says so and asks again.
  // The refusal stays on show until the next sign-in: the token is dropped, and views asked
  // for meanwhile are refused only for having none.
  let refusal = "";
  function askToken(message, fromStream) {
    const dlg = $("#login");
    const had = sessionStorage.getItem(TOKEN_KEY);
    if (had) refusal = "The node refused this token: " + (message || "not an admin");
    $("#login-error").textContent = refusal;
    if (had && fromStream) sessionStorage.removeItem(TOKEN_KEY);
    if (!dlg.open) { dlg.showModal(); $("#login-token").focus(); }
  }
  $("#login-form").addEventListener("submit", () => {
    sessionStorage.setItem(TOKEN_KEY, $("#login-token").value.trim());
    $("#login-token").value = "";
    refusal = "";
    $("#login-error").textContent = "";
    setConn(false, "signing in…");
    connect();
  });

  function confirmDialog(text) {
    const dlg = $("#confirm");
    $("#confirm-text").textContent = text;
    dlg.returnValue = "";
    dlg.showModal();
    $("#confirm-ok").focus();
    return new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true }));
  }

  // --- Live updates: GET /v1/stream (server-sent events read with fetch, so the admin token
  // goes in the Authorization header). The history comes from GET /v1/stats/history, so a
  // page opened now shows the last 15 minutes. When the stream breaks (the node stopped or
  // restarts) the page says so in a banner and reconnects with a growing delay.
  const samples = []; // /v1/stats/history samples, oldest first
  let lastStats = null, lastAlerts = null, observedEdges = [];
  let stream = null; // { ctrl, attempt }
  let attempt = 0, retryTimer = null, watchdog = null, lastEvent = 0, connected = false;
  const BACKOFF_MS = [500, 1000, 2000, 4000, 5000];
  const STALE_MS = 5000; // a sample arrives every second: this long without one means a dead link
  function setConn(ok, text) {
    const c = $("#conn");
    c.classList.toggle("live", ok);
    c.classList.toggle("down", !ok);
    $("#conn-text").textContent = text;
  }
  function banner(text) {
    const b = $("#banner");
    b.hidden = !text;
    $("#banner-text").textContent = text || "";
  }
  const ms = (s) => s === null || s === undefined ? "–" : s * 1000 < 10 ? (s * 1000).toFixed(2) : fmt(s * 1000);

  let countdown = null;
  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdown);
    if (stream) stream.ctrl.abort();
    const ctrl = new AbortController();
    stream = { ctrl };
    run(ctrl).catch((e) => {
      if (ctrl.signal.aborted && stream && stream.ctrl !== ctrl) return; // replaced by a newer one
      lost(e);
    });
  }
  async function run(ctrl) {
    const headers = { Accept: "text/event-stream" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch("/v1/stream", { headers, cache: "no-store", signal: ctrl.signal });
    if (!res.ok) {
      let err = { kind: "http_" + res.status, message: res.statusText };
      try { err = (await res.json()).error || err; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, err.kind, err.message);
    }
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    lastEvent = Date.now();
    clearInterval(watchdog);
    watchdog = setInterval(() => { if (Date.now() - lastEvent > STALE_MS) ctrl.abort(); }, 1000);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the node closed the stream");
      buf += dec.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
        }
        lastEvent = Date.now();
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  }
  function lost(e) {
    clearInterval(watchdog);
    connected = false;
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      setConn(false, "sign-in needed");
      banner("");
      askToken(e.message, true);
      return; // the sign-in form reconnects
    }
    const wait = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    attempt += 1;
    setConn(false, "reconnecting…");
    const until = Date.now() + wait;
    const say = () => banner("Connection to the node lost — reconnecting… (attempt " + attempt + ", next try in " + Math.max(0, Math.ceil((until - Date.now()) / 1000)) + " s)");
    say();
    clearInterval(countdown);
    countdown = setInterval(say, 500);
    retryTimer = setTimeout(() => { clearInterval(countdown); banner("Connection to the node lost — reconnecting… (attempt " + attempt + ", trying now)"); connect(); }, wait);
  }
  async function onEvent(name, data) {
    if (name === "hello") {
      const wasDown = attempt > 0;
      attempt = 0;
      connected = true;
      banner("");
      setConn(true, "live");
      const [hist, alerts] = await Promise.all([api("/v1/stats/history").catch(() => null), api("/v1/alerts").catch(() => null)]);
      if (hist) samples.splice(0, samples.length, ...hist.samples);
      if (alerts) lastAlerts = alerts;
      if (lastStats) renderOverview(lastStats);
      if (wasDown || current !== "overview") route();
    } else if (name === "stats") {
      lastStats = data;
      renderOverview(data);
      if (current === "health") throttled("health", loadHealth);
      if (current === "topology") throttled("topology", refreshObserved);
    } else if (name === "sample") {
      if (!samples.length || samples[samples.length - 1].t_ms < data.t_ms) samples.push(data);
      while (samples.length > 900) samples.shift();
    } else if (name === "alert") {
      lastAlerts = await api("/v1/alerts").catch(() => lastAlerts);
      if (lastStats) renderOverview(lastStats);
      if (current === "health") loadHealth().catch(showError);
    } else if (name === "dead_letter") {
      // Coalesced: a burst of dead letters reloads the list once, shortly after the first.
      if (current === "dlq" && !replaying && !dlqReload) {
        dlqReload = setTimeout(() => {
          dlqReload = null;
          if (current === "dlq" && !replaying) route();
        }, 300);
      }
    } else if (name === "replay") {
      if (followed && followed.ids.includes(data.id)) showReplays([data]);
    }
  }
  let dlqReload = null; // a pending reload of the dead-letter list (see `dead_letter` above)
  const lastRun = {};
  function throttled(key, fn) {
    const now = Date.now();
    if (lastRun[key] && now - lastRun[key] < 2000) return;
    lastRun[key] = now;
    Promise.resolve(fn()).catch(showError);
  }

  function totals(stats) {
    const subs = (stats.bus && stats.bus.subscriptions) || [];
    const t = { acked: 0, inflight: 0 };
    for (const s of subs) { t.acked += (s.stats || {}).acked || 0; t.inflight += s.in_flight || 0; }
    return t;
  }
  function renderOverview(stats) {
    const t = totals(stats);
    const s = samples[samples.length - 1];
    $("#m-throughput").textContent = s ? fmt(s.handled_per_s) : "–";
    $("#m-errors").textContent = s ? fmt(s.errors_per_s) : "–";
    $("#m-handled").textContent = fmt(t.acked);
    $("#m-inflight").textContent = fmt(t.inflight);
    $("#m-pending").textContent = fmt(stats.bus ? stats.bus.pending : null);
    const dl = stats.dead_letters ? stats.dead_letters.size : 0;
    $("#m-dlq").textContent = fmt(dl);
    $("#m-dlq").closest(".card").classList.toggle("alert", dl > 0);
    const breakers = stats.breakers || [];
    const open = breakers.filter((b) => /open/i.test(b.state) && !/half/i.test(b.state)).length;
    $("#m-breakers").textContent = fmt(open);
    $("#m-breakers-total").textContent = fmt(breakers.length);
    $("#m-breakers").closest(".card").classList.toggle("alert", open > 0);
    const L = stats.latency && stats.latency.all;
    $("#m-latency").textContent = L && L.count ? [L.p50_seconds, L.p95_seconds, L.p99_seconds].map(ms).join(" / ") : "–";
    $("#m-latency-unit").textContent = "ms over " + fmt(L ? L.count : 0) + " calls since the node started (max " + ms(L && L.max_seconds) + ")";
    const firing = lastAlerts ? lastAlerts.firing.length : null;
    $("#m-alerts").textContent = fmt(firing);
    $("#m-alerts-resolved").textContent = fmt(lastAlerts ? lastAlerts.history.filter((a) => !a.active).length : null);
    $("#m-alerts").closest(".card").classList.toggle("alert", firing > 0);
    if (samples.length > 1) {
      const span = (samples[samples.length - 1].t_ms - samples[0].t_ms) / 1000 + 1;
      const avg = (k) => samples.reduce((n, x) => n + x[k], 0) / samples.length;
      const handled = avg("handled_per_s"), failed = avg("errors_per_s");
      const peak = Math.max(...samples.map((x) => x.handled_per_s));
      $("#window-summary").textContent = "Last " + (span >= 899 ? "15 minutes" : Math.max(1, Math.round(span / 60)) + " min (the node's history since it started)") + ": " +
        fmt(handled) + " msg/s handled on average (peak " + fmt(peak) + "), " + fmt(failed) + " failures/s — error rate " +
        (handled + failed > 0 ? ((100 * failed) / (handled + failed)).toFixed(1) : "0.0") + " %.";
    }
    $("#m-published").textContent = fmt(stats.gateway ? stats.gateway.published : null);
    drawChart();

    const tbody = $("#queues tbody");
    const subs = (stats.bus && stats.bus.subscriptions) || [];
    if (!subs.length) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "note" },
        "No subscriptions yet: nothing on this node handles messages.")));
    } else tbody.replaceChildren(...subs.map((sub) => {
      const st = sub.stats || {};
      const fill = sub.capacity ? sub.depth / sub.capacity : 0;
      return el("tr", {},
        el("td", {}, el("a", { href: "#subscriptions/" + encodeURIComponent(sub.name) }, sub.name)),
        el("td", {}, sub.kind),
        el("td", { class: "r" }, fmt(sub.depth)),
        el("td", {}, el("span", { class: "bar" + (fill > 0.8 ? " hot" : ""), title: fmt(sub.depth) + " / " + fmt(sub.capacity) }, el("i", { style: "width:" + Math.min(100, fill * 100) + "%" }))),
        el("td", { class: "r" }, fmt(sub.in_flight)),
        el("td", { class: "r" }, fmt(st.acked)),
        el("td", { class: "r" }, fmt(st.failed)),
        el("td", { class: "r" }, st.dead_lettered ? el("a", { href: "#dlq?subscription=" + encodeURIComponent(sub.name) }, fmt(st.dead_lettered)) : "0"));
    }));
    $("#breakers").replaceChildren(...(breakers.length ? breakers.map((b) =>
      el("li", {}, el("span", { class: "pill " + String(b.state).toLowerCase().replace(/[^a-z]/g, "") }, b.state), " ", b.handler))
      : [el("li", { class: "note" }, "No handler with a circuit breaker registered.")]));
  }

  // --- The chart: uPlot (vendored, MIT), throughput and errors per second over 15 minutes.
  let chart = null, chartWidth = 0;
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function makeChart(box) {
    const fg = css("--muted"), grid = css("--line");
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    return new uPlot({
      width: box.clientWidth, height: 170,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      axes: [Object.assign({}, axis), Object.assign({ size: 44, values: (u, v) => v.map((x) => fmt(x)) }, axis)],
      series: [{}, { label: "handled/s", stroke: css("--k1"), width: 1.6, fill: css("--k1") + "22" },
        { label: "failures/s", stroke: css("--k2"), width: 1.6 }],
    }, [[], [], []], box);
  }
  function drawChart() {
    const box = $("#chart");
    if (box.offsetParent === null) return; // hidden: drawn when the overview is shown
    if (!chart || chartWidth !== box.clientWidth) {
      if (chart) chart.destroy();
      chart = makeChart(box);
      chartWidth = box.clientWidth;
    }
    const now = Date.now() / 1000;
    const xs = samples.map((s) => s.t_ms / 1000);
    chart.setData([xs, samples.map((s) => s.handled_per_s), samples.map((s) => s.errors_per_s)], false);
    chart.setScale("x", { min: now - HISTORY_S, max: now });
    box.dataset.points = String(samples.length);
  }
  window.addEventListener("resize", () => drawChart());
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => { if (chart) { chart.destroy(); chart = null; } drawChart(); });


  // --- Views and hash routing: #overview, #subscriptions[/name], #topology, #dlq[?…][/id], #trace[/id]
  let current = "overview";
  function route() {
    const hash = decodeURIComponent(location.hash.slice(1)) || "overview";
    const [head, ...rest] = hash.split("/");
    const [view, query] = head.split("?");
    const arg = rest.join("/");
    current = ["overview", "subscriptions", "topology", "dlq", "trace", "health"].includes(view) ? view : "overview";
    for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + current;
    for (const a of document.querySelectorAll("nav a")) a.toggleAttribute("aria-current", false), a.dataset.view === current && a.setAttribute("aria-current", "page");
    const load = { overview: () => { if (lastStats) renderOverview(lastStats); }, subscriptions: () => loadSubscriptions(arg), topology: () => loadTopology(false),
      dlq: () => loadDlq(query, arg), trace: () => loadTrace(arg), health: () => loadHealth(arg) }[current];
    Promise.resolve(load()).catch(showError);
  }
  function showError(e) {
    const sec = $("#view-" + current);
    let p = $(".view-error", sec);
    if (!p) { p = el("p", { class: "error view-error", role: "alert" }); sec.querySelector("h2").after(p); }
    // A refusal is the sign-in dialog's to explain (it keeps the node's reason); the view
    // only says what it needs, not the node's "missing bearer token" for a dropped token.
    p.textContent = !(e instanceof ApiError) ? "The node is unreachable (" + e.message + ")"
      : e.status === 401 || e.status === 403 ? "Sign in with an admin token to see this view."
      : e.kind + ": " + e.message;
  }
  function clearError() { const p = $(".view-error", $("#view-" + current)); if (p) p.remove(); }
  window.addEventListener("hashchange", route);

  // --- Subscriptions
  async function loadSubscriptions(name) {
    const data = await api("/v1/subscriptions");
    clearError();
    const subs = data.subscriptions || [];
    $("#subs tbody").replaceChildren(...subs.map((s) => el("tr", { class: s.name === name ? "selected" : null },
      el("td", {}, el("a", { href: "#subscriptions/" + encodeURIComponent(s.name) }, s.name)),
      el("td", {}, el("code", {}, s.pattern)), el("td", {}, s.kind),
      el("td", { class: "r" }, fmt(s.workers)), el("td", { class: "r" }, fmt(s.queue_capacity)), el("td", {}, s.overflow),
      el("td", { class: "r" }, fmt(s.depth)), el("td", { class: "r" }, fmt(s.in_flight)), el("td", { class: "r" }, fmt(s.handled)),
      el("td", { class: "r" }, fmt(s.failed)),
      el("td", { class: "r" }, s.dead_lettered ? el("a", { href: "#dlq?subscription=" + encodeURIComponent(s.name) }, fmt(s.dead_lettered)) : "0"))));
    const panel = $("#sub-detail");
    const sub = subs.find((s) => s.name === name);
    panel.hidden = !sub;
    if (!sub) return;
    const lat = ((lastStats && lastStats.latency && lastStats.latency.handlers) || []).find((h) => h.handler === sub.name);
    const kv = Object.entries(sub).filter(([k]) => k !== "stats").concat(Object.entries(sub.stats || {}).map(([k, v]) => ["stats." + k, v]))
      .concat(lat ? [["latency p50 / p95 / p99 / max", [lat.p50_seconds, lat.p95_seconds, lat.p99_seconds, lat.max_seconds].map(ms).join(" / ") + " ms over " + fmt(lat.count) + " calls"]] : []);
    panel.replaceChildren(el("h3", {}, "Subscription ", el("code", {}, sub.name)),
      el("dl", { class: "kv" }, kv.map(([k, v]) => [el("dt", {}, k), el("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))])),
      el("p", {}, el("a", { href: "#dlq?subscription=" + encodeURIComponent(sub.name) }, "Its dead letters")));
    panel.focus();
  }

  // --- Topology: layered SVG. Declared edges (components) or the bus's pattern → subscription
  // edges, each labelled with the traffic observed on it (`observed` in /v1/topology: publisher
  // → receiver per topic with recent rates); observed edges no declaration covers are drawn
  // too, dashed orange, as undeclared.
  const ROLE_ORDER = ["Frontend", "Cpm", "Manager", "Service", "Handler", "Processor", "System"];
  let topoSignature = "";
  const drawn = []; // { path, rate, title, base, match(observed) }
  async function loadTopology(refresh) {
    const topo = await api("/v1/topology?format=json");
    clearError();
    observedEdges = topo.observed || [];
    let layers, edges, violations = topo.violations || [];
    if (topo.source === "components") {
      const undeclared = observedEdges.filter((o) => o.declared === false);
      $("#topo-source").replaceChildren("Declared component topology, layered by role. Arrows: publisher → subscriber, labelled with the declared topic and the traffic observed on it (green while it has traffic). ",
        el("span", { class: "legend-undeclared" }, "Dashed orange: seen in traffic but not declared"), " (" + undeclared.length + " now).");
      const byRole = new Map();
      const known = new Set();
      for (const c of topo.components || []) {
        if (!byRole.has(c.role)) byRole.set(c.role, []);
        byRole.get(c.role).push({ id: c.name, label: c.name, sub: c.domain, href: "#health/" + encodeURIComponent(c.name) });
        known.add(c.name);
      }
      const order = [...byRole.keys()].sort((a, b) => (ROLE_ORDER.indexOf(a) + 99) % 106 - (ROLE_ORDER.indexOf(b) + 99) % 106);
      layers = order.map((r) => ({ name: r, nodes: byRole.get(r) }));
      // Publishers and receivers seen in traffic that the topology does not declare.
      const extra = [...new Set(undeclared.flatMap((o) => [o.from, o.to]))].filter((n) => !known.has(n));
      if (extra.length) layers.push({ name: "Not declared", nodes: extra.map((n) => ({ id: n, label: n, sub: "not in the topology", extra: true })) });
      const bad = new Set(violations.filter((v) => v.to).map((v) => (v.from.name || v.from) + "→" + (v.to.name || v.to) + "→" + v.topic));
      edges = (topo.edges || []).map((e) => ({ key: "d " + e.from + " " + e.to + " " + e.topic, from: e.from, to: e.to, label: e.topic, violation: bad.has(e.from + "→" + e.to + "→" + e.topic),
        match: (o) => o.declared && o.from === e.from && o.to === e.to && topicMatches(e.topic, o.topic) }));
      for (const o of undeclared) edges.push({ key: "u " + o.from + " " + o.to + " " + o.topic, from: o.from, to: o.to, label: "undeclared: " + o.topic, undeclared: true,
        match: (x) => x.from === o.from && x.to === o.to && x.topic === o.topic });
    } else {
      $("#topo-source").textContent = "No declared component topology: the graph the bus knows, publishers seen in traffic → topic patterns → subscriptions (thick: command handlers). Each edge carries the traffic observed on it; green edges have traffic now.";
      const regs = topo.edges || [];
      const pats = [...new Set(regs.map((e) => e.pattern))];
      const pubs = new Map(); // "from\0pattern" → edge
      for (const o of observedEdges) for (const r of regs) {
        if (r.subscription !== o.to || !topicMatches(r.pattern, o.topic)) continue;
        const k = o.from + "\u0000" + r.pattern;
        if (!pubs.has(k)) pubs.set(k, { key: "p " + k, from: "p:" + o.from, to: "t:" + r.pattern, observedEdge: true,
          match: (x) => x.from === o.from && regs.some((q) => q.pattern === r.pattern && q.subscription === x.to) && topicMatches(r.pattern, x.topic) });
      }
      const publishers = [...new Set([...pubs.values()].map((e) => e.from.slice(2)))];
      layers = [
        ...(publishers.length ? [{ name: "Publishers (seen)", nodes: publishers.map((p) => ({ id: "p:" + p, label: p, extra: p.startsWith("(") })) }] : []),
        { name: "Topics", nodes: pats.map((p) => ({ id: "t:" + p, label: p, topic: true })) },
        { name: "Subscriptions", nodes: [...new Set(regs.map((e) => e.subscription))].map((s) => ({ id: "s:" + s, label: s, href: "#subscriptions/" + encodeURIComponent(s) })) },
      ];
      edges = [...pubs.values(), ...regs.map((e) => ({ key: "r " + e.pattern + " " + e.subscription, from: "t:" + e.pattern, to: "s:" + e.subscription, kind: e.kind,
        match: (o) => o.to === e.subscription && topicMatches(e.pattern, o.topic) }))];
    }
    const signature = JSON.stringify([layers.map((l) => l.nodes.map((n) => n.id)), edges.map((e) => e.key), violations.length]);
    if (refresh && signature === topoSignature) { updateEdgeRates(); return; }
    topoSignature = signature;
    $("#topo-violations").replaceChildren(...(violations.length ? [el("div", { class: "violations", role: "alert" },
      el("strong", {}, violations.length + " layer violation(s): "),
      el("ul", {}, violations.map((v) => el("li", {}, (v.from.name || v.from) + " (" + (v.from.role || "") + ") → " + (v.to ? (v.to.name || v.to) + " (" + (v.to.role || "") + ")" : "–") + " on " + v.topic + ": " + JSON.stringify(v.rule)))))] : []));
    drawGraph(layers, edges);
  }
  const refreshObserved = () => loadTopology(true);

  function drawGraph(layers, edges) {
    const svg = $("#topo");
    const colW = 320, rowH = 54, boxW = 200, boxH = 34, padX = 30, padY = 40;
    const pos = new Map();
    layers.forEach((layer, i) => layer.nodes.forEach((n, j) => pos.set(n.id, { x: padX + i * colW, y: padY + j * rowH, n })));
    const rows = Math.max(1, ...layers.map((l) => l.nodes.length));
    // Edges going back or skipping a layer arc below the nodes (room for them at the bottom).
    const arcs = edges.some((e) => { const a = pos.get(e.from), b = pos.get(e.to); return a && b && (b.x <= a.x || b.x - a.x > colW); });
    const W = padX * 2 + (layers.length - 1) * colW + boxW, H = padY + rows * rowH + (arcs ? 50 : 0);
    // No viewBox: one unit is one CSS pixel at 100 %; the zoom is the group's transform.
    svg.style.height = Math.round(Math.min(Math.max(H + 20, 260), Math.max(260, window.innerHeight * 0.7))) + "px";
    drawn.length = 0;
    graphSize.w = W; graphSize.h = H;
    const placed = [];
    const placeLabel = (cx, baseline, w, h) => {
      const r = { x: cx - w / 2, y: baseline - 12, w, h };
      if (placed.some((q) => r.x < q.x + q.w && q.x < r.x + r.w && r.y < q.y + q.h && q.y < r.y + r.h)) return false;
      placed.push(r);
      return true;
    };
    const kids = [el("defs", {}, el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, el("path", { d: "M0,0 L10,5 L0,10 z", fill: "currentColor" })))];
    layers.forEach((l, i) => kids.push(el("text", { class: "layer", x: padX + i * colW, y: 22 }, l.name)));
    // Many edges into one node (hundreds of publishers into one topic) converge near it, and
    // their labels at the midpoints would sit on that bundle: such an edge is labelled at its
    // source end, where edges are a row apart; many out of one node, at the target end.
    const inDeg = new Map(), outDeg = new Map();
    for (const e of edges) { inDeg.set(e.to, (inDeg.get(e.to) || 0) + 1); outDeg.set(e.from, (outDeg.get(e.from) || 0) + 1); }
    const FAN = 3;
    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + boxW, y1 = a.y + boxH / 2, x2 = b.x, y2 = b.y + boxH / 2;
      const back = x2 <= x1 || b.x - a.x > colW;
      const labelW = Math.max((e.label || "").length, 10) * 6.5;
      const fanIn = !back && inDeg.get(e.to) > FAN, fanOut = !back && !fanIn && outDeg.get(e.from) > FAN;
      // An edge of a fan runs straight under its label (at its source end for a fan-in, its
      // target end for a fan-out), so the bundle's curves stay clear of the labels.
      const run = Math.min(labelW, Math.max(0, x2 - x1 - 40));
      const sx = fanIn ? x1 + run : x1, ex = fanOut ? x2 - run : x2, cx = (sx + ex) / 2;
      const d = back ? `M${a.x + boxW / 2},${a.y + boxH} C${a.x + boxW / 2},${H} ${b.x + boxW / 2},${H} ${b.x + boxW / 2},${b.y + boxH}`
        : `M${x1},${y1} H${sx} C${cx},${y1} ${cx},${y2} ${ex},${y2} H${x2}`;
      const base = (e.violation ? "LAYER VIOLATION: " : "") + (e.undeclared ? "NOT DECLARED — seen in traffic: " : "") + (e.label || e.kind || "observed traffic");
      const title = el("title", {}, base);
      const path = el("path", { class: "edge" + (e.kind === "command" ? " command" : "") + (e.violation ? " violation" : "") + (e.undeclared ? " undeclared" : ""),
        "data-test": e.undeclared ? "edge-undeclared" : null, "data-edge": drawn.length, d, "marker-end": "url(#arrow)" }, title);
      kids.push(path);
      // Where the label block is centred (`mx`), and the text's anchor there.
      let mx = back ? (a.x + b.x + boxW) / 2 : (x1 + x2) / 2, my = back ? 0.125 * (a.y + b.y + 2 * boxH) + 0.75 * H : (y1 + y2) / 2;
      let anchor = "middle", tx = mx;
      if (fanIn) { tx = x1 + 6; mx = tx + labelW / 2; my = y1; anchor = "start"; }
      else if (fanOut) { tx = x2 - 12; mx = tx - labelW / 2; my = y2; anchor = "end"; }
      // Labels above a straight edge, below an arc.
      const ly = back ? my + 14 : e.label && (fanIn || fanOut) ? my - 16 : my - 4;
      // A label that would overlap one already placed is left out (a large graph's arcs meet
      // near the bottom); the edge's tooltip still names its topic and rate.
      const shown = placeLabel(mx, e.label ? ly : back ? my + 14 : my - 5, labelW, e.label ? 28 : 14);
      if (e.label && shown) kids.push(el("text", { class: "elabel" + (e.undeclared ? " undeclared" : ""), x: tx, y: ly, "text-anchor": anchor }, e.label));
      const rate = el("text", { class: "rate", x: tx, y: e.label ? ly + 14 : back ? my + 14 : my - 5, "text-anchor": anchor, "data-test": "edge-rate", "data-edge": drawn.length }, "");
      if (shown) kids.push(rate);
      drawn.push({ path, rate, title, base, match: e.match });
    }
    for (const { x, y, n } of pos.values()) {
      const g = el("g", { class: "node" + (n.topic ? " topic" : "") + (n.extra ? " extra" : ""), transform: `translate(${x},${y})`, tabindex: n.href ? 0 : null, role: n.href ? "link" : null, "aria-label": n.label },
        el("rect", { width: boxW, height: boxH, rx: 6 }),
        el("text", { x: 10, y: n.sub ? 15 : 22 }, n.label.length > 26 ? n.label.slice(0, 25) + "…" : n.label),
        n.sub ? el("text", { x: 10, y: 29, class: "elabel" }, n.sub) : null, el("title", {}, n.label));
      if (n.href) {
        g.addEventListener("click", () => { location.hash = n.href; });
        g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); location.hash = n.href; } });
      }
      kids.push(g);
    }
    $("#topo-vp").replaceChildren(...kids);
    if (!view.touched) fitScale();
    applyView();
    updateEdgeRates();
  }

  function topicMatches(pattern, topic) {
    const p = pattern.split("."), t = topic.split(".");
    const go = (i, j) => {
      if (i === p.length) return j === t.length;
      if (p[i] === "#") return go(i + 1, j) || (j < t.length && go(i, j + 1));
      return j < t.length && (p[i] === "*" || p[i] === t[j]) && go(i + 1, j + 1);
    };
    return go(0, 0);
  }
  function updateEdgeRates() {
    for (const d of drawn) {
      let rate = 0, count = 0;
      const topics = [];
      for (const o of observedEdges) {
        if (!d.match || !d.match(o)) continue;
        rate += o.rate_per_s; count += o.count;
        topics.push(o.from + " → " + o.to + " on " + o.topic + ": " + fmt(o.rate_per_s) + "/s, " + fmt(o.count) + " in all");
      }
      d.rate.textContent = rate > 0 ? fmt(rate) + " msg/s" : count > 0 ? "idle (" + fmt(count) + " seen)" : "idle";
      d.path.classList.toggle("live", rate > 0);
      d.rate.classList.toggle("idle", rate === 0);
      d.title.textContent = d.base + (topics.length ? " — observed: " + topics.join("; ") : " — no traffic seen");
    }
  }

  // Zoom and pan: a transform on the graph's group; wheel zooms at the pointer, a drag pans,
  // the buttons and keys (+ − 0 arrows on the focused graph) do the same.
  // Until the user zooms or pans, the graph is fitted to the view (never enlarged past 100 %),
  // but a tall graph (hundreds of publishers or topics) is not shrunk below FIT_MIN for its
  // height: its labels stay readable and the rest is a drag or an arrow key away.
  const FIT_MIN = 0.75;
  const view = { k: 1, x: 0, y: 0, touched: false };
  const graphSize = { w: 0, h: 0 };
  function fitScale() {
    const svg = $("#topo");
    const k = graphSize.w ? Math.min(1, svg.clientWidth / graphSize.w, Math.max(FIT_MIN, svg.clientHeight / graphSize.h)) : 1;
    view.k = Math.max(0.25, k); view.x = 0; view.y = 0;
  }
  function applyView() {
    $("#topo-vp").setAttribute("transform", "translate(" + view.x.toFixed(1) + "," + view.y.toFixed(1) + ") scale(" + view.k.toFixed(3) + ")");
    const svg = $("#topo");
    const larger = graphSize.w * view.k > svg.clientWidth + 1 || graphSize.h * view.k > svg.clientHeight + 1;
    $("#zoom-level").textContent = Math.round(view.k * 100) + " %" + (larger ? " · the graph is larger than the view: drag to see the rest" : "");
  }
  function zoomAt(factor, cx, cy) {
    const k = Math.min(4, Math.max(0.25, view.k * factor));
    if (cx === undefined) {
      // The buttons and keys keep the graph's top-left corner in place while it is in view
      // (a small graph grows to the right and down), otherwise zoom around the middle.
      const b = $("#topo-vp").getBBox(), svg = $("#topo");
      const left = view.x + b.x * view.k, top = view.y + b.y * view.k;
      const inView = left >= 0 && top >= 0 && left < svg.clientWidth && top < svg.clientHeight;
      cx = inView ? left : svg.clientWidth / 2; cy = inView ? top : svg.clientHeight / 2;
    }
    view.x = cx - ((cx - view.x) * k) / view.k;
    view.y = cy - ((cy - view.y) * k) / view.k;
    view.k = k;
    view.touched = true;
    applyView();
  }
  function pan(dx, dy) { view.x += dx; view.y += dy; view.touched = true; applyView(); }
  function fit() { fitScale(); view.touched = false; applyView(); }
  function svgPoint(ev) {
    const m = $("#topo").getScreenCTM();
    return m ? new DOMPoint(ev.clientX, ev.clientY).matrixTransform(m.inverse()) : { x: 0, y: 0 };
  }
  $("#zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("#zoom-out").addEventListener("click", () => zoomAt(0.8));
  $("#zoom-fit").addEventListener("click", fit);
  for (const b of document.querySelectorAll(".zoom .pan")) b.addEventListener("click", () => pan(Number(b.dataset.dx) * 60, Number(b.dataset.dy) * 60));
  $("#topo").addEventListener("wheel", (ev) => { ev.preventDefault(); const p = svgPoint(ev); zoomAt(ev.deltaY < 0 ? 1.15 : 1 / 1.15, p.x, p.y); }, { passive: false });
  $("#topo").addEventListener("keydown", (ev) => {
    if (ev.target !== $("#topo")) return;
    const keys = { "+": () => zoomAt(1.25), "=": () => zoomAt(1.25), "-": () => zoomAt(0.8), "0": fit,
      ArrowLeft: () => pan(60, 0), ArrowRight: () => pan(-60, 0), ArrowUp: () => pan(0, 60), ArrowDown: () => pan(0, -60) };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });
  let drag = null;
  $("#topo").addEventListener("pointerdown", (ev) => { if (ev.button !== 0) return; const p = svgPoint(ev); drag = { x: p.x, y: p.y, vx: view.x, vy: view.y, moved: false, id: ev.pointerId }; });
  $("#topo").addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const p = svgPoint(ev);
    const dx = p.x - drag.x, dy = p.y - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 4) return;
    if (!drag.moved) { drag.moved = true; $("#topo").setPointerCapture(drag.id); $("#topo").classList.add("dragging"); }
    view.x = drag.vx + dx; view.y = drag.vy + dy; view.touched = true;
    applyView();
  });
  const endDrag = () => { if (drag && drag.moved) { $("#topo").classList.remove("dragging"); const m = drag; setTimeout(() => { if (drag === m) drag = null; }); } else drag = null; };
  $("#topo").addEventListener("pointerup", endDrag);
  $("#topo").addEventListener("pointercancel", endDrag);
  // A drag that ends on a node does not open it.
  $("#topo").addEventListener("click", (ev) => { if (drag && drag.moved) { ev.stopPropagation(); ev.preventDefault(); drag = null; } }, true);

  // --- Dead letters
  let dlqItems = [];
  // The filter the list shows (from the hash, not the form's boxes, which may hold an edit
  // not applied yet) and how many entries match it: what "Purge all matching" purges.
  let dlqApplied = { filter: {}, total: 0 };
  let replaying = false; // a replay is being followed: dead_letter events do not reload the list
  const selected = new Set();
  // datetime-local inputs hold local time; the API and the hash hold RFC 3339 (UTC).
  const toIso = (local) => { const d = new Date(local); return Number.isNaN(d.getTime()) ? null : d.toISOString(); };
  const toLocal = (iso) => { const d = new Date(iso); return Number.isNaN(d.getTime()) ? "" : new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19); };
  function dlqQuery() {
    const f = new FormData($("#dlq-filter"));
    const q = new URLSearchParams();
    for (const k of ["topic", "subscription", "error", "limit"]) if (f.get(k)) q.set(k, f.get(k));
    for (const k of ["since", "until"]) if (f.get(k) && toIso(f.get(k))) q.set(k, toIso(f.get(k)));
    return q;
  }
  $("#dlq-filter").addEventListener("submit", (ev) => { ev.preventDefault(); location.hash = "dlq?" + dlqQuery().toString(); });
  async function loadDlq(query, id) {
    const params = new URLSearchParams(query || "");
    const form = $("#dlq-filter");
    for (const k of ["topic", "subscription", "error"]) form.elements[k].value = params.get(k) || "";
    for (const k of ["since", "until"]) form.elements[k].value = params.get(k) ? toLocal(params.get(k)) : "";
    if (params.get("limit")) form.elements.limit.value = params.get("limit");
    const data = await api("/v1/dlq?" + params.toString());
    clearError();
    dlqItems = data.items || [];
    const filter = {};
    for (const k of ["topic", "subscription", "error", "since", "until"]) if (params.get(k)) filter[k] = params.get(k);
    dlqApplied = { filter, total: data.total };
    for (const s of [...selected]) if (!dlqItems.some((i) => i.id === s)) selected.delete(s);
    $("#dlq-total").textContent = "(" + dlqItems.length + (dlqItems.length !== data.total ? " shown of " + data.total : "") + (params.toString() ? " matching the filter" : "") + ")";
    const base = "#dlq" + (query ? "?" + query : "") + "/";
    $("#dlq tbody").replaceChildren(...(dlqItems.length ? dlqItems.map((it) => el("tr", { class: it.id === id ? "selected" : null, "data-id": it.id },
      el("td", {}, el("input", { type: "checkbox", "aria-label": "Select " + it.id, checked: selected.has(it.id), onchange: (ev) => { ev.target.checked ? selected.add(it.id) : selected.delete(it.id); syncDlqButtons(); } })),
      el("td", {}, el("a", { href: base + encodeURIComponent(it.id) }, (it.dead_lettered_at || "").replace("T", " ").replace(/\.\d+Z$/, "Z"))),
      el("td", {}, el("code", {}, it.message ? it.message.topic : "")),
      el("td", {}, el("a", { href: "#subscriptions/" + encodeURIComponent(it.handler || "") }, it.handler || "")),
      el("td", {}, it.reason), el("td", { class: "err" }, it.error), el("td", { class: "r" }, fmt(it.attempts)),
      el("td", {}, it.message ? el("a", { href: "#trace/" + it.message.correlation_id }, it.message.correlation_id.slice(-8)) : "")))
      : [el("tr", {}, el("td", { colspan: 8, class: "note" }, "No dead letters."))]));
    syncDlqButtons();
    const panel = $("#dlq-detail");
    panel.hidden = !id;
    if (id) {
      const it = dlqItems.find((i) => i.id === id) || await api("/v1/dlq/" + encodeURIComponent(id)).catch(() => null);
      if (!it) { panel.replaceChildren(el("p", { class: "note" }, "Dead letter " + id + " is no longer in the queue (replayed or purged).")); return; }
      renderDlqItem(panel, it);
    }
  }
  function syncDlqButtons() {
    $("#dlq-replay").disabled = selected.size === 0;
    $("#dlq-purge").disabled = selected.size === 0;
    $("#dlq-replay").textContent = "Replay selected" + (selected.size ? " (" + selected.size + ")" : "");
    $("#dlq-purge").textContent = "Purge selected" + (selected.size ? " (" + selected.size + ")" : "");
    $("#dlq-all").checked = dlqItems.length > 0 && dlqItems.every((i) => selected.has(i.id));
  }
  $("#dlq-all").addEventListener("change", (ev) => { for (const i of dlqItems) ev.target.checked ? selected.add(i.id) : selected.delete(i.id); route(); });

  function hex(b64) {
    const bin = atob(b64);
    const lines = [];
    for (let o = 0; o < bin.length; o += 16) {
      const chunk = bin.slice(o, o + 16);
      const h = [...chunk].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
      const a = [...chunk].map((c) => (c.charCodeAt(0) >= 32 && c.charCodeAt(0) < 127 ? c : ".")).join("");
      lines.push(o.toString(16).padStart(8, "0") + "  " + h.padEnd(48) + "  " + a);
    }
    return lines.join("\n");
  }
  function renderDlqItem(panel, it) {
    const m = it.message || {};
    panel.replaceChildren(
      el("h3", {}, "Dead letter ", el("code", {}, it.id)),
      el("dl", { class: "kv" },
        el("dt", {}, "Topic"), el("dd", {}, m.topic), el("dt", {}, "Kind"), el("dd", {}, m.kind),
        el("dt", {}, "Handler"), el("dd", {}, it.handler), el("dt", {}, "Reason"), el("dd", {}, it.reason),
        el("dt", {}, "Error"), el("dd", { class: "error" }, it.error), el("dt", {}, "Attempts"), el("dd", {}, String(it.attempts)),
        el("dt", {}, "Dead-lettered at"), el("dd", {}, it.dead_lettered_at),
        el("dt", {}, "Correlation"), el("dd", {}, el("a", { href: "#trace/" + m.correlation_id }, m.correlation_id)),
        el("dt", {}, "Content type"), el("dd", {}, m.content_type)),
      el("h4", {}, "Headers"),
      el("dl", { class: "kv" }, Object.entries(m.headers || {}).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      el("h4", {}, "Payload"),
      el("pre", { "data-test": "payload" }, "payload" in m ? JSON.stringify(m.payload, null, 2) : m.payload_base64 ? hex(m.payload_base64) : "(empty)"),
      el("div", { class: "actions" },
        el("button", { onclick: () => replay([it.id]) }, "Replay this message"),
        el("button", { class: "danger", onclick: () => purge({ ids: [it.id] }, "Purge dead letter " + it.id + "?") }, "Purge")));
    panel.focus();
  }

  // The last replay made from this page: its ids are followed through GET /v1/dlq/replays
  // (and the node's `replay` events), which report each subscription's handling of the very
  // message re-published and its dead-lettering again.
  let followed = null;
  function replayText(st) {
    const subs = (o) => [...new Set(st.outcomes.filter((x) => x.outcome === o).map((x) => x.subscription || "the bus"))].join(", ");
    const last = (o) => [...st.outcomes].reverse().find((x) => x.outcome === o) || {};
    if (st.status === "dead_lettered") return { done: true, ok: false, text: "dead-lettered again: " + (last("dead_lettered").error || "") };
    if (st.status === "failed") { const f = st.outcomes.find((x) => x.outcome !== "handled"); return { done: false, ok: false, text: f.outcome + " by " + (f.subscription || "the bus") + ": " + (f.error || "") }; }
    if (st.status === "handled") return { done: true, ok: true, text: "handled by " + subs("handled") + " ✓" };
    if (st.status === "unknown") return { done: true, ok: false, text: "not followed by this node" };
    return { done: false, ok: true, text: "waiting for the handler…" };
  }
  function showReplays(states) {
    if (!followed) return true;
    for (const st of states) followed.states[st.id] = st;
    const parts = followed.ids.map((id) => ({ id, r: replayText(followed.states[id] || { status: "pending", outcomes: [] }) }));
    const out = $("#dlq-result");
    out.className = parts.every((p) => p.r.ok) ? "ok" : "error";
    const head = "Replayed " + followed.res.replayed + (followed.res.failed.length ? ", failed: " + followed.res.failed.map((f) => f.id + " (" + f.error + ")").join(", ") : "");
    out.textContent = head + (parts.length === 1 ? ": " + parts[0].r.text : parts.length ? ": " + parts.map((p) => p.id.slice(-8) + " " + p.r.text).join("; ") : ".");
    return parts.every((p) => p.r.done);
  }
  async function replay(ids) {
    if (!await confirmDialog("Replay " + ids.length + " dead letter(s)? Events are published again, commands sent to their handler again.")) return;
    const res = await api("/v1/dlq/replay", { method: "POST", json: { ids } });
    res.failed = res.failed || [];
    ids.forEach((i) => selected.delete(i));
    followed = { ids: ids.filter((id) => !res.failed.some((f) => f.id === id)), res, states: {} };
    const mine = followed;
    showReplays([]);
    const listHash = location.hash.split("/")[0];
    replaying = true;
    try {
      if (location.hash !== listHash) location.hash = listHash; else await loadDlq((listHash.split("?")[1] || ""), null).catch(() => {});
      // Follow the exact ids until each is handled or dead-lettered again (20 s at most;
      // `replay` events update the line later too).
      for (let i = 0; i < 80 && mine === followed && mine.ids.length; i++) {
        const got = await api("/v1/dlq/replays?ids=" + mine.ids.map(encodeURIComponent).join(",")).catch(() => null);
        if (got && mine === followed && showReplays(got.replays)) break;
        await new Promise((r) => setTimeout(r, 250));
      }
    } finally { replaying = false; }
    if (mine === followed && mine.ids.some((id) => (mine.states[id] || {}).status === "dead_lettered")) route();
  }
  async function purge(body, text) {
    if (!await confirmDialog(text)) return;
    const res = await api("/v1/dlq/purge", { method: "POST", json: body });
    const out = $("#dlq-result");
    out.className = "ok";
    out.textContent = "Purged " + res.purged + ".";
    (body.ids || []).forEach((i) => selected.delete(i));
    if (location.hash.includes("/")) location.hash = location.hash.split("/")[0]; else route();
  }
  $("#dlq-replay").addEventListener("click", () => replay([...selected]).catch(showError));
  $("#dlq-purge").addEventListener("click", () => purge({ ids: [...selected] }, "Purge " + selected.size + " selected dead letter(s)? This cannot be undone.").catch(showError));
  $("#dlq-purge-all").addEventListener("click", () => {
    // Exactly what the list shows: the applied filter goes to the node, which purges the
    // entries the same listing matches.
    const { filter, total } = dlqApplied;
    const named = Object.entries(filter).map(([k, v]) => k + "=" + v).join(", ");
    const text = named ? "Purge the " + fmt(total) + " dead letter(s) matching " + named + "?"
      : "Purge all " + fmt(total) + " dead letter(s), unfiltered?";
    purge(Object.assign({ all: true }, filter), text + " This cannot be undone.").catch(showError);
  });

  // --- Alerts and health: liveness (/health), readiness and uptime (/v1/status), transport and
  // component health (/v1/health), breakers and latency (/v1/stats), alerts (/v1/alerts).
  const when = (t) => t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
  async function loadHealth(focus) {
    const [status, live, alerts, stats, health] = await Promise.all([
      api("/v1/status"),
      fetch("/health", { cache: "no-store" }).then((r) => r.ok).catch(() => false),
      api("/v1/alerts"),
      lastStats ? Promise.resolve(lastStats) : api("/v1/stats"),
      api("/v1/health"),
    ]);
    clearError();
    lastAlerts = alerts;
    const pill = (st) => el("span", { class: "pill health-" + st }, st);
    const th = health.transport;
    $("#health-transport").replaceChildren(el("span", {}, "Transport ", el("strong", {}, th.kind), ": "), pill(th.status), " " + th.state,
      el("span", { class: "note" }, " — overall " + health.status + ", rates over the last " + fmt(health.window_s) + " s"));
    $("#health-components tbody").replaceChildren(...(health.components.length ? health.components.map((c) => el("tr", { "data-test": "component-health", "data-status": c.status, class: c.name === focus ? "selected" : null },
      el("td", {}, pill(c.status)),
      el("td", {}, c.subscriptions.length === 1 ? el("a", { href: "#subscriptions/" + encodeURIComponent(c.subscriptions[0]) }, c.name) : c.name),
      el("td", {}, c.role || "–"),
      el("td", { class: "r" }, fmt(c.backlog) + (c.capacity ? " / " + fmt(c.capacity) : "")),
      el("td", { class: "r" }, fmt(c.handled_per_s)), el("td", { class: "r" }, fmt(c.errors_per_s)),
      el("td", { class: "r" }, c.dead_lettered ? el("a", { href: "#dlq?subscription=" + encodeURIComponent(c.subscriptions[0] || c.name) }, fmt(c.dead_lettered)) : "0"),
      el("td", { class: "r", "data-test": "last-seen", title: c.heartbeat ? c.heartbeat.heartbeats + " heartbeat(s), " + c.heartbeat.updates + " status update(s)" : "no health checker report" },
        c.heartbeat ? fmt(c.heartbeat.last_seen_ms / 1000) + " s ago" : "–"),
      el("td", { class: "reasons" }, c.reasons.length ? c.reasons.join("; ") : c.subscriptions.length ? "" : "no subscription on this node")))
      : [el("tr", {}, el("td", { colspan: 9, class: "note" }, "No component or subscription yet."))]));
    const tr = stats.transport || {};
    const breakers = stats.breakers || [];
    const open = breakers.filter((b) => b.state === "Open").length;
    const card = (test, label, value, unit, bad) => el("div", { class: "card" + (bad ? " alert" : ""), "data-test": test },
      el("span", { class: "label" }, label), el("span", { class: "num" }, value), el("span", { class: "unit" }, unit));
    $("#health-cards").replaceChildren(
      card("liveness", "Liveness", live ? "ok" : "down", "/health", !live),
      card("readiness", "Readiness", status.ready ? "ready" : "not ready", status.ready ? "uptime " + fmt(status.uptime_s) + " s" : status.not_ready.join("; "), !status.ready),
      card("transport", "Transport " + th.kind, th.status === "healthy" ? "connected" : th.status,
        tr.kind === "nats" ? tr.state + ", " + fmt(tr.reconnects) + " reconnects, " + fmt(tr.publish_failures) + " publish failures" : th.kind === "memory" ? "in process" : th.state, th.status !== "healthy"),
      card("components", "Components", fmt(health.components.filter((c) => c.status === "healthy").length) + " / " + fmt(health.components.length),
        "healthy; " + health.components.filter((c) => c.status === "failing").length + " failing", health.components.some((c) => c.status !== "healthy")),
      card("breakers", "Breakers open", fmt(open), "of " + fmt(breakers.length), open > 0),
      card("alerts-firing", "Alerts firing", fmt(alerts.firing.length), fmt(alerts.history.length) + " in the history", alerts.firing.length > 0));
    const sev = (s) => el("span", { class: "pill sev-" + s }, s);
    $("#alerts-firing tbody").replaceChildren(...(alerts.firing.length ? alerts.firing.map((a) => el("tr", { "data-test": "alert-firing" },
      el("td", {}, sev(a.severity)), el("td", {}, a.rule), el("td", {}, el("code", {}, a.subject)), el("td", {}, a.message),
      el("td", { class: "r" }, fmt(a.count)), el("td", {}, when(a.first_ms)), el("td", {}, a.source)))
      : [el("tr", {}, el("td", { colspan: 7, class: "note" }, "No alert firing."))]));
    $("#alerts-history tbody").replaceChildren(...(alerts.history.length ? alerts.history.map((a) => el("tr", { "data-test": "alert-history" },
      el("td", {}, el("span", { class: "pill " + (a.active ? "open" : "closed") }, a.active ? "firing" : "resolved")),
      el("td", {}, sev(a.severity)), el("td", {}, a.rule), el("td", {}, el("code", {}, a.subject)), el("td", {}, a.message),
      el("td", {}, when(a.first_ms)), el("td", {}, when(a.resolved_ms))))
      : [el("tr", {}, el("td", { colspan: 7, class: "note" }, "No alert raised since the node started."))]));
    const lat = new Map(((stats.latency && stats.latency.handlers) || []).map((h) => [h.handler, h]));
    const br = new Map(breakers.map((b) => [b.handler, b.state]));
    $("#health-handlers tbody").replaceChildren(...((stats.bus && stats.bus.subscriptions) || []).map((s) => {
      const l = lat.get(s.name) || {};
      const state = br.get(s.name);
      return el("tr", {},
        el("td", {}, el("a", { href: "#subscriptions/" + encodeURIComponent(s.name) }, s.name)),
        el("td", {}, state ? el("span", { class: "pill " + state.toLowerCase().replace(/[^a-z]/g, "") }, state) : "–"),
        // "Failed" is stats.failed here as in the overview and Subscriptions views; rejections
        // are their own column.
        el("td", { class: "r" }, fmt((s.stats || {}).acked)), el("td", { class: "r" }, fmt((s.stats || {}).failed)),
        el("td", { class: "r" }, fmt((s.stats || {}).rejected)),
        el("td", { class: "r" }, ms(l.p50_seconds)), el("td", { class: "r" }, ms(l.p95_seconds)), el("td", { class: "r" }, ms(l.p99_seconds)));
    }));
  }

  // --- Traces
  $("#trace-form").addEventListener("submit", (ev) => { ev.preventDefault(); const id = new FormData(ev.target).get("id").trim(); if (id) location.hash = "trace/" + id; });
  async function loadTrace(id) {
    const out = $("#trace-out");
    $("#trace-form").elements.id.value = id || "";
    if (!id) { out.replaceChildren(el("p", { class: "note" }, "Enter a correlation id, or click one in the dead letters.")); return; }
    let data;
    try { data = await api("/v1/trace/" + encodeURIComponent(id)); } catch (e) {
      if (e instanceof ApiError && e.status < 500) { out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message)); return; }
      throw e;
    }
    clearError();
    // The dead letters of this trace's own messages (by id, wherever they are in the queue:
    // a bad night's thousands of older dead letters must not hide them), 1000 ids a request.
    const ids = [...new Set((data.messages || []).map((m) => m.id))];
    const chunks = [];
    for (let i = 0; i < ids.length; i += 1000) chunks.push(ids.slice(i, i + 1000));
    const entriesOf = async (c) => { // every page: a message has one entry per subscription that gave up
      const items = [];
      for (let total = 1; items.length < total;) {
        const page = await api("/v1/dlq?limit=1000&offset=" + items.length + "&ids=" + c.map(encodeURIComponent).join(","));
        total = page.total;
        if (!(page.items || []).length) break;
        items.push(...page.items);
      }
      return { items };
    };
    const lists = await Promise.all(chunks.map((c) => entriesOf(c).catch(() => ({ items: [] }))));
    const failed = new Map();
    for (const l of lists) for (const i of l.items || []) if (!failed.has(i.id)) failed.set(i.id, i);
    const msgs = new Map((data.messages || []).map((m) => [m.id, m]));
    const calls = new Map();
    for (const d of data.deliveries || []) { if (!calls.has(d.message_id)) calls.set(d.message_id, []); calls.get(d.message_id).push(d); }
    const delivery = (d) => el("li", { class: "tdelivery" + (d.outcome === "handled" ? "" : " failed"), "data-test": "trace-delivery" },
      el("span", {}, "→ " + d.handler), el("span", { class: "pill" }, d.outcome),
      el("span", { class: "ms" }, "attempt " + d.attempt + ", " + Number(d.duration_ms).toFixed(2) + " ms"),
      d.error ? el("span", { class: "error" }, d.error) : null);
    const tree = data.tree || { roots: [] };
    const span = Math.max(tree.span_ms || 0, 1);
    const node = (n) => {
      const m = msgs.get(n.id) || {};
      const f = failed.get(n.id);
      return el("li", {},
        el("div", { class: "tnode" + (f ? " failed" : ""), "data-test": "trace-node" },
          el("span", { class: "t" }, n.topic), el("span", { class: "pill" }, n.kind),
          n.source ? el("span", { class: "ms" }, "from " + n.source) : null,
          el("span", { class: "ms" }, "at +" + Number(n.at_ms).toFixed(1) + " ms"),
          el("span", { class: "ms" }, "(+" + Number(n.since_parent_ms).toFixed(1) + " ms after parent)"),
          el("span", { class: "tbar", style: "width:" + Math.max(2, (n.at_ms / span) * 160) + "px", "aria-hidden": "true" }),
          f ? el("a", { class: "error", href: "#dlq/" + encodeURIComponent(f.id) }, "failed in " + f.handler + ": " + f.error) : null,
          el("details", {}, el("summary", {}, "message"), el("pre", {}, JSON.stringify(m, null, 2)))),
        calls.has(n.id) ? el("ul", { class: "tdeliveries" }, calls.get(n.id).map(delivery)) : null,
        n.children && n.children.length ? el("ul", {}, n.children.map(node)) : null);
    };
    out.replaceChildren(
      el("p", {}, "Correlation ", el("code", {}, data.correlation_id), " — " + (data.messages || []).length + " message(s) over " + Number(tree.span_ms || 0).toFixed(1) + " ms, " + (data.deliveries || []).length + " handler call(s)"),
      el("ul", { class: "tree", "data-test": "trace-tree" }, (tree.roots || []).map(node)));
  }

  // --- Start: the live stream (the overview updates on it; other views load on navigation)
  route();
  connect();
})();
