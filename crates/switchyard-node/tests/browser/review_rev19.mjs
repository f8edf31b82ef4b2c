// Review rev19 (run by tests/dashboard/review_rev19.rs with MODE = hostile | empty | scale |
// auth, DASHBOARD_URL, CHROMIUM): the dashboard under hostile data, at scale, with a token
// that is not an admin's, and empty. Screenshots to /tmp/rev19-*.png. Exits non-zero on the
// first failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const url = process.env.DASHBOARD_URL;
const mode = process.env.MODE;
const profile = mkdtempSync(join(tmpdir(), "switchyard-rev19-"));
const T = 10000;
const step = (s) => console.log("rev19: " + s);
const fail = (m) => { throw new Error(m); };

const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-precise-memory-info",
    "--js-flags=--expose-gc"],
});
const page = ctx.pages()[0] || await ctx.newPage();
const errors = [];
page.on("pageerror", (e) => errors.push("pageerror: " + String(e)));
page.on("console", (m) => { if (m.type() === "error") errors.push("console: " + m.text() + " " + JSON.stringify(m.location().url || "")); });
page.on("response", (r) => { if (r.status() >= 400) console.log(`rev19: HTTP ${r.status()} ${r.request().method()} ${r.url()}`); });
page.on("dialog", (d) => { errors.push("a JS dialog opened: " + d.message()); d.dismiss(); });
const shot = (name) => page.screenshot({ path: `/tmp/rev19-${name}.png`, fullPage: true });
const view = async (v) => { await page.evaluate((h) => { location.hash = h; }, v); };
const pwned = async (where) => {
  const st = await page.evaluate(() => ({
    pwned: window.__pwned,
    imgs: [...document.querySelectorAll("img")].map((i) => i.getAttribute("src")),
    svgOnload: document.querySelectorAll("[onload],[onerror]").length,
    jsLinks: [...document.querySelectorAll("a[href], [href]")].map((a) => a.getAttribute("href")).filter((h) => /^\s*javascript:/i.test(h)),
  }));
  if (st.pwned !== undefined) fail(`${where}: window.__pwned = ${st.pwned}: the page ran injected script`);
  if (st.imgs.length) fail(`${where}: injected <img> elements in the DOM: ${st.imgs}`);
  if (st.svgOnload) fail(`${where}: ${st.svgOnload} elements with onload/onerror attributes`);
  if (st.jsLinks.length) fail(`${where}: javascript: links: ${st.jsLinks}`);
};
// Every console error counts (the favicon.ico 404 the `favicon` mode found is fixed: the page
// declares its icon).
const real = () => errors;
const text = () => page.evaluate(() => document.body.innerText);

try {
  if (mode === "hostile") {
    const XSS = process.env.XSS, XSS_ID = process.env.XSS_ID, END = process.env.SCRIPT_END;
    await page.goto(url);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.locator("#m-dlq", { hasText: "1" }).waitFor({ timeout: T });
    await pwned("overview");
    await shot("hostile-overview");

    await view("subscriptions");
    await page.locator("#subs tbody tr").first().waitFor({ timeout: T });
    await page.locator("#subs tbody a").first().click();
    await page.locator("#sub-detail:not([hidden])").waitFor({ timeout: T });
    await pwned("subscriptions");
    step("subscriptions: " + (await page.textContent("#subs tbody")).slice(0, 120));
    await shot("hostile-subscriptions");

    await view("topology");
    await page.locator("#topo g.node").first().waitFor({ timeout: T });
    await page.waitForTimeout(0);
    await page.locator("#topo text", { hasText: XSS.slice(0, 20) }).first().waitFor({ timeout: T })
      .catch(() => fail("topology: the hostile source is not shown as text: " + XSS));
    await pwned("topology");
    await shot("hostile-topology");
    step("topology shows the hostile source as text");

    await view("dlq");
    const row = page.locator("#dlq tbody tr", { hasText: "evil.charge" });
    await row.waitFor({ timeout: T });
    const rowText = await row.innerText();
    if (!rowText.includes(XSS) || !rowText.includes(END)) fail("dlq row does not show the error literally: " + rowText);
    await row.locator("td:nth-child(2) a").click();
    await page.locator("#dlq-detail:not([hidden])").waitFor({ timeout: T });
    await page.locator("#dlq-detail", { hasText: "javascript:window.__pwned=1" }).first().waitFor({ timeout: T });
    const detail = await page.textContent("#dlq-detail");
    for (const s of [XSS, END, XSS_ID]) if (!detail.includes(s)) fail(`dlq detail lacks ${s} literally: ${detail.slice(0, 400)}`);
    await pwned("dead letter detail");
    await shot("hostile-dlq");
    step("dead letter: error, headers, payload and correlation shown literally");
    // The correlation link goes to the trace view, not anywhere else.
    const corr = await page.locator("#dlq-detail a", { hasText: XSS_ID }).first().getAttribute("href");
    if (!corr.startsWith("#trace/")) fail("correlation link is " + corr);

    await view("trace/" + encodeURIComponent(XSS_ID));
    await page.locator("[data-test=trace-tree] [data-test=trace-node]").first().waitFor({ timeout: T });
    const tr = await page.textContent("#trace-out");
    if (!tr.includes(XSS_ID) || !tr.includes(XSS)) fail("trace lacks the hostile id/text: " + tr.slice(0, 300));
    await page.locator("#trace-out details").first().evaluate((d) => { d.open = true; });
    await pwned("trace");
    await shot("hostile-trace");
    step("trace shows the hostile correlation id and source literally");

    await view("health");
    await page.locator("#alerts-firing tbody tr", { hasText: "-firing" }).waitFor({ timeout: T });
    const firing = await page.textContent("#alerts-firing");
    if (!firing.includes(XSS + "-firing")) fail("firing alert rule not literal: " + firing);
    await page.locator("#alerts-history tbody tr", { hasText: "resolved" }).first().waitFor({ timeout: T });
    const hist = await page.textContent("#alerts-history");
    if (!hist.includes(END) || !hist.includes("javascript:window.__pwned=1")) fail("alert history not literal: " + hist);
    await pwned("alerts");
    await shot("hostile-health");
    step("alerts show rule, subject and message literally");

    await view("overview");
    await page.waitForTimeout(1500); // a few live `stats` events re-render the overview
    await pwned("overview after the tour");
    if (real().length) fail("errors: " + real().join("; "));
  } else if (mode === "empty") {
    await page.goto(url);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.waitForFunction(() => /\d/.test(document.querySelector("#m-handled").textContent), null, { timeout: T });
    const cards = await page.evaluate(() => Object.fromEntries(["m-handled", "m-dlq", "m-alerts", "m-latency", "m-throughput"].map((id) => [id, document.getElementById(id).textContent])));
    step("empty overview cards: " + JSON.stringify(cards));
    if (cards["m-handled"] !== "0" || cards["m-dlq"] !== "0" || cards["m-alerts"] !== "0") fail("a fresh node's cards: " + JSON.stringify(cards));
    // The empty Queues table says why it is empty, as the dead-letter table does.
    await page.locator("#queues tbody", { hasText: "No subscriptions yet" }).waitFor({ timeout: T });
    await shot("empty-overview");
    for (const v of ["subscriptions", "topology", "dlq", "trace", "health"]) {
      await view(v);
      await page.locator(`#view-${v === "subscriptions" ? "subscriptions" : v}:not([hidden])`).waitFor({ timeout: T });
      await page.waitForTimeout(300);
      const t = await text();
      if (/\[object \w+\]|undefined|NaN|Infinity/.test(t)) fail(`${v}: broken value: ${t.match(/.{0,60}(\[object \w+\]|undefined|NaN|Infinity).{0,60}/s)[0]}`);
      await shot("empty-" + v);
    }
    await view("dlq");
    await page.locator("#dlq tbody", { hasText: "No dead letters" }).waitFor({ timeout: T });
    await page.locator("#banner").waitFor({ state: "hidden", timeout: T });
    if (real().length) fail("console errors on a fresh node: " + real().join("; "));
    step("every view empty, no console errors");
  } else if (mode === "scale") {
    const t0 = Date.now();
    await page.goto(url);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.waitForFunction(() => Number(document.querySelector("#m-dlq").textContent.replace(/,/g, "")) >= 500, null, { timeout: T });
    step(`overview live in ${Date.now() - t0} ms, DOM ${await page.evaluate(() => document.getElementsByTagName("*").length)} nodes`);
    const timed = async (v, sel) => {
      const s = Date.now();
      await view(v);
      await page.locator(sel).first().waitFor({ state: "attached", timeout: T });
      const ms = Date.now() - s;
      const dom = await page.evaluate(() => document.getElementsByTagName("*").length);
      step(`${v}: rendered in ${ms} ms, DOM ${dom} nodes`);
      return { ms, dom };
    };
    const topo = await timed("topology", "#topo g.node");
    await shot("scale-topology");
    // A tall graph is not fitted down to an unreadable size: it stays at 75 % or more and
    // says the rest is a drag away.
    const zoom = await page.textContent("#zoom-level");
    step("topology zoom: " + zoom);
    if (parseInt(zoom, 10) < 75) fail(`topology with 2,000 topics fitted to ${zoom}: labels unreadable`);
    if (!/larger than the view/.test(zoom)) fail(`the topology does not say it is larger than the view: ${zoom}`);
    const dlq = await timed("dlq", "#dlq tbody tr[data-id]");
    const rows = await page.locator("#dlq tbody tr").count();
    step(`dlq rows: ${rows}; heading ${await page.textContent("#dlq-total")}`);
    await shot("scale-dlq");
    // Responsiveness while dead letters keep arriving with the dlq view open.
    let worst = 0;
    for (let i = 0; i < 10; i++) { const s = Date.now(); await page.evaluate(() => 1); worst = Math.max(worst, Date.now() - s); await page.waitForTimeout(200); }
    step(`dlq view under live dead letters: worst evaluate round-trip ${worst} ms`);
    if (worst > 1000) fail(`the page stalls: ${worst} ms for a round-trip`);
    // Memory and DOM over 30 s of traffic on the overview (the view people leave open).
    await view("overview");
    await page.waitForTimeout(2000);
    const measure = () => page.evaluate(() => { if (window.gc) window.gc(); return { heap: performance.memory ? performance.memory.usedJSHeapSize : 0, dom: document.getElementsByTagName("*").length }; });
    const m0 = await measure();
    const series = [];
    for (let i = 0; i < 6; i++) { await page.waitForTimeout(5000); series.push(await measure()); }
    const m1 = series[series.length - 1];
    step(`overview over 30 s: heap ${(m0.heap / 1e6).toFixed(1)} -> ${series.map((m) => (m.heap / 1e6).toFixed(1)).join(" -> ")} MB, DOM ${m0.dom} -> ${series.map((m) => m.dom).join(" -> ")}`);
    await shot("scale-overview");
    if (topo.ms > 5000) fail(`topology with 2,000 topics took ${topo.ms} ms`);
    if (dlq.ms > 5000) fail(`dlq with 500 dead letters took ${dlq.ms} ms`);
    if (m1.dom > m0.dom + 200) fail(`the overview DOM grows: ${m0.dom} -> ${m1.dom}`);
    if (m1.heap > m0.heap * 1.5 + 5e6) fail(`the heap grows: ${m0.heap} -> ${m1.heap}`);
    if (real().length) fail("errors: " + real().join("; "));
  } else if (mode === "auth") {
    await page.goto(url);
    await page.locator("#login[open]").waitFor({ timeout: T });
    const noData = async (who) => {
      const t = await text();
      if (/launch-codes|classified-reason|vault/.test(t)) fail(`${who}: the page shows data: ${t.slice(0, 300)}`);
      if ((await page.textContent("#m-handled")).trim() !== "–") fail(`${who}: figures shown`);
      if (await page.locator("#conn.live").count()) fail(`${who}: the page says live`);
    };
    await noData("no token");
    // Not an admin: refused with the node's reason, still no data, even on the dlq view.
    await page.fill("#login-token", process.env.SHOP_TOKEN);
    await page.press("#login-token", "Enter");
    await page.locator("#login[open] #login-error", { hasText: "refused" }).waitFor({ timeout: T });
    step("shop token: " + await page.textContent("#login-error"));
    await view("dlq");
    await page.waitForTimeout(1000);
    await noData("shop token on the dlq view");
    await view("topology");
    await page.waitForTimeout(1000);
    await noData("shop token on the topology view");
    // Still says why the token was refused (not "missing bearer token": the refused token
    // was dropped, and the views asked again without one).
    const why = await page.textContent("#login-error");
    if (!/lacks the admin grant/.test(why)) fail(`after moving views the dialog says: ${JSON.stringify(why)}`);
    // The view behind the dialog says what it needs, not the node's "missing bearer token".
    const line = await page.textContent("#view-topology .view-error");
    if (!/Sign in with an admin token/.test(line || "")) fail(`the topology view's error line says: ${JSON.stringify(line)}`);
    await shot("auth-refused");
    // The admin sees it.
    await page.fill("#login-token", process.env.OPS_TOKEN);
    await page.press("#login-token", "Enter");
    await page.locator("#conn.live").waitFor({ timeout: T });
    await view("dlq");
    await page.locator("#dlq tbody tr", { hasText: "secret.launch-codes" }).waitFor({ timeout: T });
    await shot("auth-admin");
    if (await page.locator("#view-dlq .view-error").count()) fail("after the admin signed in the dlq view still shows: " + await page.textContent("#view-dlq .view-error"));
    step("admin token sees the dead letter");
    const left = real().filter((e) => !/401|403|Unauthorized|Forbidden/.test(e));
    if (left.length) fail("errors: " + left.join("; "));
  } else if (mode === "favicon") {
    // Opening the dashboard logs nothing in the console: no request of the page fails.
    await page.goto(url);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.waitForTimeout(1000);
    if (errors.length) fail("console errors on opening the dashboard: " + errors.join("; "));
  } else if (mode === "reconnect") {
    // The node stops and a new one serves on the same port (STOP_NODE / START_NODE on
    // stdout, STOPPED / STARTED on stdin): the page says so meanwhile and is live again
    // without a reload.
    const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    const ask = async (req, ans) => { console.log(req); const { value } = await lines.next(); if ((value || "").trim() !== ans) fail(`${req}: got ${value}`); };
    await page.goto(url);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.waitForFunction(() => Number(document.querySelector("#m-handled").textContent.replace(/,/g, "")) > 0, null, { timeout: T });
    await page.evaluate(() => { window.__sameDocument = true; });
    await ask("STOP_NODE", "STOPPED");
    await page.locator("#banner:not([hidden])", { hasText: "Connection to the node lost" }).waitFor({ timeout: T });
    await page.locator("#conn.down").waitFor({ timeout: T });
    step("node down: " + await page.textContent("#banner"));
    await shot("reconnect-down");
    await ask("START_NODE", "STARTED");
    await page.locator("#conn.live").waitFor({ timeout: 15000 });
    await page.locator("#banner").waitFor({ state: "hidden", timeout: T });
    // Live data from the new node: its handled count (from 0) grows on the page.
    const a = await page.textContent("#m-handled");
    await page.waitForFunction((v) => document.querySelector("#m-handled").textContent !== v, a, { timeout: T });
    step(`live again: handled ${a} -> ${await page.textContent("#m-handled")}`);
    if (!(await page.evaluate(() => window.__sameDocument))) fail("the page reloaded");
    await shot("reconnect-live");
    const left = real().filter((e) => !/ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|network error|Failed to fetch|ERR_INCOMPLETE_CHUNKED/.test(e));
    if (left.length) fail("errors: " + left.join("; "));
  } else fail("unknown MODE " + mode);
  step("ok");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
