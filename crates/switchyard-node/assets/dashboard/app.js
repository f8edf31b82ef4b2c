// switchyard dashboard: plain JS, no dependencies. Every figure comes from the node's admin
// API; the page keeps the last 15 minutes of /v1/stats samples in memory for the chart.
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
  function askToken(message) {
    const dlg = $("#login");
    $("#login-error").textContent = message || "";
    if (!dlg.open) dlg.showModal();
  }
  $("#login-form").addEventListener("submit", () => {
    sessionStorage.setItem(TOKEN_KEY, $("#login-token").value.trim());
    $("#login-token").value = "";
    tick();
    route();
  });

  function confirmDialog(text) {
    const dlg = $("#confirm");
    $("#confirm-text").textContent = text;
    dlg.returnValue = "";
    dlg.showModal();
    $("#confirm-ok").focus();
    return new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true }));
  }

  // --- Connection state
  let down = false;
  function setConn(ok, text) {
    const c = $("#conn");
    c.classList.toggle("live", ok);
    c.classList.toggle("down", !ok);
    $("#conn-text").textContent = text;
  }

  // --- Live overview: poll /v1/stats every second
  const samples = []; // {t, rate, err}
  let last = null;
  let lastStats = null, lastAlerts = null, lastRows = null;
  const rates = new Map(); // "topic\0handler" → deliveries/s over the last poll
  const ms = (s) => s === null || s === undefined ? "–" : s * 1000 < 10 ? (s * 1000).toFixed(2) : fmt(s * 1000);
  function totals(stats) {
    const subs = (stats.bus && stats.bus.subscriptions) || [];
    const t = { acked: 0, errors: 0, inflight: 0, depth: 0 };
    for (const s of subs) {
      const st = s.stats || {};
      t.acked += st.acked || 0;
      t.errors += (st.failed || 0) + (st.rejected || 0) + (st.panicked || 0) + (st.decode_failed || 0);
      t.inflight += s.in_flight || 0;
      t.depth += s.depth || 0;
    }
    return t;
  }

  async function tick() {
    let stats;
    try {
      stats = await api("/v1/stats");
    } catch (e) {
      if (e instanceof ApiError) { setConn(false, e.status === 401 || e.status === 403 ? "sign-in needed" : "error: " + e.message); }
      else { down = true; setConn(false, "reconnecting…"); }
      return;
    }
    lastAlerts = await api("/v1/alerts").catch(() => lastAlerts);
    if (down) { down = false; if (current !== "overview") route(); }
    setConn(true, "live");
    const now = Date.now() / 1000;
    const t = totals(stats);
    // Observed traffic per (topic, handler): the rate of each handler row's deliveries.
    const rows = new Map(((stats.handlers && stats.handlers.handlers) || []).map((h) => [h.topic + "\u0000" + h.handler, h.delivered || 0]));
    if (lastRows && now > lastRows.t) {
      rates.clear();
      for (const [k, v] of rows) rates.set(k, Math.max(0, v - (lastRows.map.get(k) || 0)) / (now - lastRows.t));
    }
    lastRows = { t: now, map: rows };
    lastStats = stats;
    if (last && now > last.t) {
      const dt = now - last.t;
      // Counters restart with the node: a drop means a restart, not a negative rate.
      const d = (a, b) => Math.max(0, a - b);
      samples.push({ t: now, rate: d(t.acked, last.acked) / dt, err: d(t.errors, last.errors) / dt });
      while (samples.length && samples[0].t < now - HISTORY_S) samples.shift();
    }
    last = Object.assign({ t: now }, t);
    renderOverview(stats, t);
    if (current === "topology") updateEdgeRates();
    if (current === "health") loadHealth().catch(showError);
  }

  function renderOverview(stats, t) {
    const s = samples[samples.length - 1];
    $("#m-throughput").textContent = s ? fmt(s.rate) : "–";
    $("#m-errors").textContent = s ? fmt(s.err) : "–";
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
    if (samples.length) {
      const span = samples[samples.length - 1].t - samples[0].t + 1;
      const avg = (k) => samples.reduce((n, x) => n + x[k], 0) / samples.length;
      const handled = avg("rate"), failed = avg("err");
      const peak = Math.max(...samples.map((x) => x.rate));
      $("#window-summary").textContent = "Last " + (span >= 899 ? "15 minutes" : Math.max(1, Math.round(span / 60)) + " min (since this tab opened)") + ": " +
        fmt(handled) + " msg/s handled on average (peak " + fmt(peak) + "), " + fmt(failed) + " failures/s — error rate " +
        (handled + failed > 0 ? ((100 * failed) / (handled + failed)).toFixed(1) : "0.0") + " %.";
    }
    $("#m-published").textContent = fmt(stats.gateway ? stats.gateway.published : null);
    drawChart();

    const tbody = $("#queues tbody");
    tbody.replaceChildren(...((stats.bus && stats.bus.subscriptions) || []).map((sub) => {
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

  function drawChart() {
    const svg = $("#chart");
    const W = 900, H = 160, top = 8, bottom = 18, left = 34;
    const now = Date.now() / 1000;
    const max = Math.max(1, ...samples.map((s) => Math.max(s.rate, s.err)));
    const x = (t) => left + ((t - (now - HISTORY_S)) / HISTORY_S) * (W - left);
    const y = (v) => H - bottom - (v / max) * (H - top - bottom);
    const line = (key, cls) => el("polyline", { points: samples.map((s) => x(s.t).toFixed(1) + "," + y(s[key]).toFixed(1)).join(" "), fill: "none", stroke: "var(" + cls + ")", "stroke-width": 1.6, "vector-effect": "non-scaling-stroke" });
    const kids = [];
    for (const f of [0, 0.5, 1]) {
      kids.push(el("line", { class: "grid", x1: left, x2: W, y1: y(max * f), y2: y(max * f), "vector-effect": "non-scaling-stroke" }));
      kids.push(el("text", { class: "axis", x: 2, y: y(max * f) + 4 }, fmt(max * f)));
    }
    for (const m of [15, 10, 5]) kids.push(el("text", { class: "axis", x: x(now - m * 60), y: H - 4 }, "-" + m + "m"));
    kids.push(line("rate", "--k1"), line("err", "--k2"));
    svg.replaceChildren(...kids);
  }

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
    const load = { overview: () => {}, subscriptions: () => loadSubscriptions(arg), topology: loadTopology, dlq: () => loadDlq(query, arg), trace: () => loadTrace(arg), health: loadHealth }[current];
    Promise.resolve(load()).catch(showError);
  }
  function showError(e) {
    const sec = $("#view-" + current);
    let p = $(".view-error", sec);
    if (!p) { p = el("p", { class: "error view-error", role: "alert" }); sec.querySelector("h2").after(p); }
    p.textContent = e instanceof ApiError ? e.kind + ": " + e.message : "The node is unreachable (" + e.message + ")";
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

  // --- Topology: layered SVG
  const ROLE_ORDER = ["Frontend", "Cpm", "Manager", "Service", "Handler", "Processor", "System"];
  async function loadTopology() {
    const topo = await api("/v1/topology?format=json");
    clearError();
    let layers, edges, violations = topo.violations || [];
    if (topo.source === "components") {
      $("#topo-source").textContent = "Declared component topology, layered by role. Arrows: publisher → subscriber, labelled with the topic.";
      const byRole = new Map();
      for (const c of topo.components || []) {
        if (!byRole.has(c.role)) byRole.set(c.role, []);
        byRole.get(c.role).push({ id: c.name, label: c.name, sub: c.domain, href: null });
      }
      const order = [...byRole.keys()].sort((a, b) => (ROLE_ORDER.indexOf(a) + 99) % 106 - (ROLE_ORDER.indexOf(b) + 99) % 106);
      layers = order.map((r) => ({ name: r, nodes: byRole.get(r) }));
      const bad = new Set(violations.filter((v) => v.to).map((v) => (v.from.name || v.from) + "→" + (v.to.name || v.to) + "→" + v.topic));
      edges = (topo.edges || []).map((e) => ({ from: e.from, to: e.to, label: e.topic, violation: bad.has(e.from + "→" + e.to + "→" + e.topic), observe: { pattern: e.topic, handler: null } }));
    } else {
      $("#topo-source").textContent = "No declared component topology: the graph the bus knows, topic patterns → subscriptions (thick: command handlers). Each edge carries the traffic observed on it; green edges have traffic now.";
      const pats = [...new Set((topo.edges || []).map((e) => e.pattern))];
      layers = [
        { name: "Topics", nodes: pats.map((p) => ({ id: "t:" + p, label: p, topic: true })) },
        { name: "Subscriptions", nodes: [...new Set((topo.edges || []).map((e) => e.subscription))].map((s) => ({ id: "s:" + s, label: s, href: "#subscriptions/" + encodeURIComponent(s) })) },
      ];
      edges = (topo.edges || []).map((e) => ({ from: "t:" + e.pattern, to: "s:" + e.subscription, kind: e.kind, observe: { pattern: e.pattern, handler: e.subscription } }));
    }
    $("#topo-violations").replaceChildren(...(violations.length ? [el("div", { class: "violations", role: "alert" },
      el("strong", {}, violations.length + " layer violation(s): "),
      el("ul", {}, violations.map((v) => el("li", {}, (v.from.name || v.from) + " (" + (v.from.role || "") + ") → " + (v.to ? (v.to.name || v.to) + " (" + (v.to.role || "") + ")" : "–") + " on " + v.topic + ": " + JSON.stringify(v.rule)))))] : []));
    drawGraph(layers, edges);
  }

  function drawGraph(layers, edges) {
    const svg = $("#topo");
    const colW = 320, rowH = 54, boxW = 200, boxH = 34, padX = 30, padY = 40;
    const pos = new Map();
    layers.forEach((layer, i) => layer.nodes.forEach((n, j) => pos.set(n.id, { x: padX + i * colW, y: padY + j * rowH, n })));
    const rows = Math.max(1, ...layers.map((l) => l.nodes.length));
    const W = padX * 2 + (layers.length - 1) * colW + boxW, H = padY + rows * rowH;
    // No viewBox: one unit is one CSS pixel at 100 %; the zoom is the group's transform.
    svg.style.height = Math.round(Math.min(Math.max(H, 260), Math.max(260, window.innerHeight * 0.7))) + "px";
    observed.length = 0;
    const kids = [el("defs", {}, el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, el("path", { d: "M0,0 L10,5 L0,10 z", fill: "currentColor" })))];
    layers.forEach((l, i) => kids.push(el("text", { class: "layer", x: padX + i * colW, y: 22 }, l.name)));
    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + boxW, y1 = a.y + boxH / 2, x2 = b.x, y2 = b.y + boxH / 2;
      const back = x2 <= x1;
      const d = back ? `M${a.x + boxW / 2},${a.y + boxH} C${a.x + boxW / 2},${H} ${b.x + boxW / 2},${H} ${b.x + boxW / 2},${b.y + boxH}`
        : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
      const title = el("title", {}, (e.violation ? "LAYER VIOLATION: " : "") + (e.label || e.kind || ""));
      const path = el("path", { class: "edge" + (e.kind === "command" ? " command" : "") + (e.violation ? " violation" : ""), d, "marker-end": "url(#arrow)" }, title);
      kids.push(path);
      const mx = back ? (a.x + b.x + boxW) / 2 : (x1 + x2) / 2, my = back ? H - 6 : (y1 + y2) / 2;
      if (e.label) kids.push(el("text", { class: "elabel", x: mx - 30, y: my - 4 }, e.label));
      if (e.observe) {
        const rate = el("text", { class: "rate", x: mx, y: my + (e.label ? 10 : -5), "text-anchor": "middle", "data-test": "edge-rate" }, "");
        kids.push(rate);
        observed.push(Object.assign({ path, rate, title, base: title.textContent }, e.observe));
      }
    }
    for (const { x, y, n } of pos.values()) {
      const g = el("g", { class: "node" + (n.topic ? " topic" : ""), transform: `translate(${x},${y})`, tabindex: n.href ? 0 : null, role: n.href ? "link" : null, "aria-label": n.label },
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
    applyView();
    updateEdgeRates();
  }

  // Observed traffic on the drawn edges: every handler row whose topic the edge's pattern
  // matches (and whose handler is the edge's subscription, when it has one).
  const observed = [];
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
    for (const o of observed) {
      let total = 0;
      const topics = [];
      for (const [k, r] of rates) {
        const [topic, handler] = k.split("\u0000");
        if ((o.handler === null || o.handler === handler) && topicMatches(o.pattern, topic)) { total += r; topics.push(topic + " " + fmt(r) + "/s"); }
      }
      o.rate.textContent = total > 0 ? fmt(total) + " msg/s" : "idle";
      o.path.classList.toggle("live", total > 0);
      o.rate.classList.toggle("idle", total === 0);
      o.title.textContent = o.base + (topics.length ? " — observed: " + topics.join(", ") : " — no traffic in the last second");
    }
  }

  // Zoom and pan: a transform on the graph's group; wheel zooms at the pointer, a drag pans,
  // the buttons and keys (+ − 0 arrows on the focused graph) do the same.
  const view = { k: 1, x: 0, y: 0 };
  function applyView() {
    $("#topo-vp").setAttribute("transform", "translate(" + view.x.toFixed(1) + "," + view.y.toFixed(1) + ") scale(" + view.k.toFixed(3) + ")");
    $("#zoom-level").textContent = Math.round(view.k * 100) + " %";
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
    applyView();
  }
  function pan(dx, dy) { view.x += dx; view.y += dy; applyView(); }
  function fit() { view.k = 1; view.x = 0; view.y = 0; applyView(); }
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
    view.x = drag.vx + dx; view.y = drag.vy + dy;
    applyView();
  });
  const endDrag = () => { if (drag && drag.moved) { $("#topo").classList.remove("dragging"); const m = drag; setTimeout(() => { if (drag === m) drag = null; }); } else drag = null; };
  $("#topo").addEventListener("pointerup", endDrag);
  $("#topo").addEventListener("pointercancel", endDrag);
  // A drag that ends on a node does not open it.
  $("#topo").addEventListener("click", (ev) => { if (drag && drag.moved) { ev.stopPropagation(); ev.preventDefault(); drag = null; } }, true);

  // --- Dead letters
  let dlqItems = [];
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

  async function replay(ids) {
    if (!await confirmDialog("Replay " + ids.length + " dead letter(s)? Events are published again, commands sent to their handler again.")) return;
    const items = ids.map((id) => dlqItems.find((i) => i.id === id)).filter(Boolean);
    const before = await api("/v1/subscriptions").catch(() => ({ subscriptions: [] }));
    const res = await api("/v1/dlq/replay", { method: "POST", json: { ids } });
    ids.forEach((i) => selected.delete(i));
    const out = $("#dlq-result");
    out.className = res.failed && res.failed.length ? "error" : "ok";
    out.textContent = "Replayed " + res.replayed + (res.failed && res.failed.length ? ", failed: " + res.failed.map((f) => f.id + " (" + f.error + ")").join(", ") : "") + ". Waiting for the handler…";
    const listHash = location.hash.split("/")[0];
    if (location.hash !== listHash) location.hash = listHash; else await loadDlq((listHash.split("?")[1] || ""), null).catch(() => {});
    // Follow the result: handled once the handler's acked counter moves and the ids are not back in the queue.
    const handlers = [...new Set(items.map((i) => i.handler))];
    const acked = (subs) => handlers.reduce((n, h) => n + ((subs.find((s) => s.name === h) || {}).stats || {}).acked || 0, 0);
    const start = acked(before.subscriptions || []);
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 250));
      const [subs, dlq] = await Promise.all([api("/v1/subscriptions").catch(() => null), api("/v1/dlq?limit=1000").catch(() => null)]);
      if (!subs || !dlq) continue;
      const back = ids.filter((id) => (dlq.items || []).some((x) => x.id === id));
      if (back.length) { out.className = "error"; out.textContent = "Replayed " + res.replayed + "; dead-lettered again: " + back.join(", "); route(); return; }
      const gained = acked(subs.subscriptions || []) - start;
      if (res.replayed > 0 && gained >= res.replayed) { out.className = "ok"; out.textContent = "Replayed " + res.replayed + ": handled by " + handlers.join(", ") + " ✓"; return; }
    }
    out.textContent = "Replayed " + res.replayed + "; not handled yet (check the subscription).";
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
    const topic = $("#dlq-filter").elements.topic.value.trim();
    const body = topic ? { all: true, topic } : { all: true };
    purge(body, "Purge ALL dead letters" + (topic ? " on " + topic : "") + "? This cannot be undone.").catch(showError);
  });

  // --- Alerts and health: liveness (/health), readiness and uptime (/v1/status), transport and
  // breakers (/v1/stats), alerts (/v1/alerts).
  const when = (t) => t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
  async function loadHealth() {
    const [status, live, alerts, stats] = await Promise.all([
      api("/v1/status"),
      fetch("/health", { cache: "no-store" }).then((r) => r.ok).catch(() => false),
      api("/v1/alerts"),
      lastStats ? Promise.resolve(lastStats) : api("/v1/stats"),
    ]);
    clearError();
    lastAlerts = alerts;
    const tr = stats.transport || {};
    const breakers = stats.breakers || [];
    const open = breakers.filter((b) => b.state === "Open").length;
    const card = (test, label, value, unit, bad) => el("div", { class: "card" + (bad ? " alert" : ""), "data-test": test },
      el("span", { class: "label" }, label), el("span", { class: "num" }, value), el("span", { class: "unit" }, unit));
    $("#health-cards").replaceChildren(
      card("liveness", "Liveness", live ? "ok" : "down", "/health", !live),
      card("readiness", "Readiness", status.ready ? "ready" : "not ready", status.ready ? "uptime " + fmt(status.uptime_s) + " s" : status.not_ready.join("; "), !status.ready),
      card("transport", "Transport " + (tr.kind || status.transport), tr.state || (status.ready ? "connected" : "–"),
        tr.kind === "nats" ? fmt(tr.reconnects) + " reconnects, " + fmt(tr.publish_failures) + " publish failures" : "in process", tr.state && tr.state !== "Connected"),
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
        el("td", { class: "r" }, fmt((s.stats || {}).acked)), el("td", { class: "r" }, fmt(((s.stats || {}).failed || 0) + ((s.stats || {}).rejected || 0))),
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
    const dlq = await api("/v1/dlq?limit=1000").catch(() => ({ items: [] }));
    const failed = new Map((dlq.items || []).map((i) => [i.id, i]));
    const msgs = new Map((data.messages || []).map((m) => [m.id, m]));
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
        n.children && n.children.length ? el("ul", {}, n.children.map(node)) : null);
    };
    out.replaceChildren(
      el("p", {}, "Correlation ", el("code", {}, data.correlation_id), " — " + (data.messages || []).length + " message(s) over " + Number(tree.span_ms || 0).toFixed(1) + " ms"),
      el("ul", { class: "tree", "data-test": "trace-tree" }, (tree.roots || []).map(node)));
  }

  // --- Start: poll every second (the overview updates; other views load on navigation)
  route();
  tick();
  setInterval(tick, 1000);
})();
