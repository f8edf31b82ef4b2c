// Review rev43 (run by tests/dashboard/review_rev43.rs with MODE = counts | failed-column |
// dlq | purge-filter | trace | expired, DASHBOARD_URL, SCREENSHOT_DIR, CHROMIUM): the
// dashboard as an operator on call uses it. Exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const url = process.env.DASHBOARD_URL;
const mode = process.env.MODE;
const dir = process.env.SCREENSHOT_DIR || tmpdir();
const profile = mkdtempSync(join(tmpdir(), "switchyard-rev43-"));
const T = 10000;
const step = (s) => console.log("rev43: " + s);
const fail = (m) => { throw new Error(m); };

const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const page = ctx.pages()[0] || await ctx.newPage();
const errors = [];
page.on("pageerror", (e) => errors.push("pageerror: " + String(e)));
page.on("console", (m) => { if (m.type() === "error") errors.push("console: " + m.text()); });
page.on("dialog", (d) => { errors.push("a JS dialog opened: " + d.message()); d.dismiss(); });
const shot = (name) => page.screenshot({ path: join(dir, `review_rev43-${name}.png`), fullPage: true });
const view = (v) => page.evaluate((h) => { location.hash = h; }, v);
const num = (s) => Number(String(s).replace(/,/g, "").trim());
const pwned = async (where) => {
  const st = await page.evaluate(() => ({
    pwned: window.__pwned,
    imgs: document.querySelectorAll("img").length,
    scripts: [...document.querySelectorAll("script")].filter((s) => !/app\.js|uPlot/.test(s.src)).length,
    on: document.querySelectorAll("[onload],[onerror]").length,
  }));
  if (st.pwned !== undefined || st.imgs || st.scripts || st.on) fail(`${where}: injected markup ran or landed in the DOM: ${JSON.stringify(st)}`);
};
// Cells of the row whose first cell is `name` in table `sel`, by header text.
const row = (sel, name) => page.evaluate(([sel, name]) => {
  const t = document.querySelector(sel);
  const heads = [...t.querySelectorAll("thead th")].map((h) => h.textContent.trim());
  const r = [...t.querySelectorAll("tbody tr")].find((tr) => tr.cells[0] && tr.cells[0].textContent.trim() === name);
  if (!r) return null;
  return Object.fromEntries(heads.map((h, i) => [h, r.cells[i] ? r.cells[i].textContent.trim() : null]));
}, [sel, name]);
const waitText = (sel, re) => page.waitForFunction(([sel, re]) => { const e = document.querySelector(sel); return e && new RegExp(re).test(e.textContent); }, [sel, re.source], { timeout: T });
const confirm = async () => { await page.locator("#confirm[open]").waitFor({ timeout: T }); await page.click("#confirm-ok"); };

try {
  if (mode === "counts") {
    await page.goto(url);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await waitText("#m-handled", /^9$/);
    const cards = await page.evaluate(() => Object.fromEntries(["m-handled", "m-dlq", "m-published", "m-inflight"].map((id) => [id, document.getElementById(id).textContent])));
    step("cards: " + JSON.stringify(cards));
    if (cards["m-handled"] !== "9" || cards["m-dlq"] !== "3" || cards["m-published"] !== "12" || cards["m-inflight"] !== "0") fail("overview cards differ from the bus: " + JSON.stringify(cards));
    const q = { pay: await row("#queues", "pay"), flaky: await row("#queues", "flaky") };
    step("queues: " + JSON.stringify(q));
    if (q.pay.Acked !== "5" || q.pay["Dead-lettered"] !== "2" || q.flaky.Acked !== "4" || q.flaky.Failed !== "1" || q.flaky["Dead-lettered"] !== "1") fail("queue table differs: " + JSON.stringify(q));
    await shot("counts-overview");
    await view("subscriptions/flaky");
    await page.locator("#sub-detail:not([hidden])").waitFor({ timeout: T });
    const s = { pay: await row("#subs", "pay"), flaky: await row("#subs", "flaky") };
    step("subscriptions: " + JSON.stringify(s));
    if (s.pay.Handled !== "5" || s.pay["Dead-lettered"] !== "2" || s.flaky.Handled !== "4" || s.flaky.Failed !== "1" || s.flaky["Dead-lettered"] !== "1") fail("subscriptions table differs: " + JSON.stringify(s));
    const detail = await page.textContent("#sub-detail");
    if (!/stats\.retried\s*2/.test(detail)) fail("the detail panel does not show 2 retries: " + detail.slice(0, 600));
    await shot("counts-subscriptions");
    // The dead-lettered link goes to exactly that subscription's dead letters.
    await page.locator("#subs tbody tr", { hasText: "pay" }).locator("a", { hasText: "2" }).click();
    await page.locator("#dlq tbody tr[data-id]").first().waitFor({ timeout: T });
    const n = await page.locator("#dlq tbody tr[data-id]").count();
    const handlers = await page.locator("#dlq tbody tr[data-id] td:nth-child(4)").allTextContents();
    step(`pay's dead letters: ${n} ${JSON.stringify(handlers)}; heading ${await page.textContent("#dlq-total")}`);
    if (n !== 2 || handlers.some((h) => h !== "pay")) fail("the subscription's dead-letter link lists " + JSON.stringify(handlers));
    // Live: more traffic while the page is open, no reload.
    await view("overview");
    await page.evaluate(() => { window.__same = true; });
    for (const b of ['{"n": 10}', '{"n": 11}', '{"n": 12}', '{"why": "late"}']) {
      const r = await page.evaluate((b) => fetch("/v1/publish/pay.live", { method: "POST", headers: { "content-type": "application/json" }, body: b }).then((r) => r.status), b);
      if (r !== 202) fail("publish from the page: " + r);
    }
    const t0 = Date.now();
    await waitText("#m-handled", /^12$/);
    await waitText("#m-dlq", /^4$/);
    await waitText("#m-published", /^16$/);
    await page.waitForFunction(() => { const r = [...document.querySelectorAll("#queues tbody tr")].find((tr) => tr.cells[0].textContent === "pay"); return r && r.cells[5].textContent === "8" && r.cells[7].textContent === "3"; }, null, { timeout: T });
    step(`live: handled 12, dead letters 4, published 16, pay acked 8 / dead-lettered 3 within ${Date.now() - t0} ms`);
    if (!(await page.evaluate(() => window.__same))) fail("the page reloaded");
    await shot("counts-live");
    if (errors.length) fail("errors: " + errors.join("; "));
  } else if (mode === "failed-column") {
    await page.goto(url);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await waitText("#m-handled", /^9$/);
    const overview = (await row("#queues", "pay")).Failed;
    await view("subscriptions");
    await page.locator("#subs tbody tr").first().waitFor({ timeout: T });
    const subs = (await row("#subs", "pay")).Failed;
    await view("health");
    await page.locator("#health-handlers tbody tr").first().waitFor({ timeout: T });
    const healthRow = await row("#health-handlers", "pay");
    const health = healthRow.Failed;
    await shot("failed-column-health");
    step(`pay (5 acked, 2 rejected): Failed = ${overview} (overview), ${subs} (subscriptions), ${health} (health)`);
    if (!(overview === subs && subs === health)) fail(`one subscription's "Failed" differs between views: overview ${overview}, subscriptions ${subs}, health ${health}`);
    if (healthRow.Rejected !== "2") fail(`the health table does not show pay's 2 rejections apart: ${JSON.stringify(healthRow)}`);
  } else if (mode === "dlq") {
    const odd = (process.env.ODD_TOPICS || "").split("\n").filter(Boolean);
    await page.goto(url + "#dlq");
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.locator("#dlq tbody tr[data-id]").first().waitFor({ timeout: T });
    const total = 7 + odd.length;
    await waitText("#m-dlq", new RegExp("^" + total + "$"));
    const rows = await page.locator("#dlq tbody tr[data-id]").count();
    step(`dlq: ${rows} rows, heading ${await page.textContent("#dlq-total")}`);
    if (rows !== total) fail(`${rows} rows for ${total} dead letters`);
    for (const t of odd) await page.locator("#dlq tbody tr td:nth-child(3) code", { hasText: t }).first().waitFor({ timeout: T }).catch(() => fail("topic not shown literally: " + t));
    await pwned("dlq list");
    await shot("dlq-list");
    const open = async (topic) => {
      await page.locator("#dlq tbody tr[data-id]").filter({ has: page.locator("td:nth-child(3) code", { hasText: new RegExp("^" + topic.replace(".", "\\.") + "$") }) }).locator("td:nth-child(2) a").click();
      await page.locator("#dlq-detail:not([hidden])").waitFor({ timeout: T });
      await page.locator("#dlq-detail h3").waitFor({ timeout: T });
      return page.textContent("#dlq-detail [data-test=payload]");
    };
    const bin = await open("vault.bin");
    step("binary payload:\n" + bin);
    if (!/^00000000  ff fe 00 01 80 c3 28 3c/.test(bin)) fail("binary payload not shown as hex: " + bin);
    // The ASCII column (after the hex) read across its lines holds the markup as text.
    const ascii = bin.split("\n").map((l) => l.slice(60)).join("");
    if (!ascii.includes("(<img src=x onerror=window.__pwned=1></script><script>")) fail("the ASCII column lacks the markup as text: " + ascii);
    await pwned("binary detail");
    await shot("dlq-binary");
    const html = await open("vault.html");
    step("html payload:\n" + html);
    if (!/^00000000  3c 73 63 72 69 70 74 3e/.test(html) || !html.split("\n").map((l) => l.slice(60)).join("").startsWith("<script>window.__pwned=3</script>")) fail("HTML payload not shown as bytes/text: " + html);
    await pwned("html detail");
    const js = await open("vault.json");
    const detail = await page.textContent("#dlq-detail");
    if (!detail.includes("<img src=x onerror=window.__pwned=5>") || !js.includes("refused <img")) fail("hostile JSON/headers not literal: " + detail.slice(0, 500));
    await pwned("json detail");
    await shot("dlq-json");
    // Replay it from its detail panel: handled by vault, gone from the list, counts drop.
    await page.click("#dlq-detail button:has-text('Replay this message')");
    await confirm();
    await waitText("#dlq-result", /handled by vault ✓/);
    step("replay: " + await page.textContent("#dlq-result"));
    await waitText("#m-dlq", new RegExp("^" + (total - 1) + "$"));
    await page.waitForFunction((n) => document.querySelectorAll("#dlq tbody tr[data-id]").length === n, total - 1, { timeout: T });
    if (await page.locator("#dlq tbody tr td:nth-child(3) code", { hasText: /^vault\.json$/ }).count()) fail("the replayed dead letter is still listed");
    await shot("dlq-replayed");
    // Purge one from its detail panel.
    await open("vault.html");
    await page.click("#dlq-detail button:has-text('Purge')");
    await confirm();
    await waitText("#dlq-result", /Purged 1\./);
    await waitText("#m-dlq", new RegExp("^" + (total - 2) + "$"));
    await page.waitForFunction((n) => document.querySelectorAll("#dlq tbody tr[data-id]").length === n, total - 2, { timeout: T });
    await shot("dlq-purged");
    step("purge: " + await page.textContent("#dlq-result") + "; heading " + await page.textContent("#dlq-total"));
    // Filters: error substring, then subscription.
    await page.fill("#dlq-filter input[name=error]", "other refused");
    await page.click("#dlq-filter button[type=submit]");
    await page.waitForFunction(() => document.querySelectorAll("#dlq tbody tr[data-id]").length === 3, null, { timeout: T });
    await page.fill("#dlq-filter input[name=error]", "");
    await page.fill("#dlq-filter input[name=topic]", "other.b");
    await page.click("#dlq-filter button[type=submit]");
    await page.waitForFunction(() => document.querySelectorAll("#dlq tbody tr[data-id]").length === 1, null, { timeout: T });
    step("filters: error 'other refused' 3 rows, topic other.b 1 row: " + await page.textContent("#dlq-total"));
    await pwned("after the tour");
    if (errors.length) fail("errors: " + errors.join("; "));
  } else if (mode === "purge-filter") {
    await page.goto(url + "#dlq?subscription=other");
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.waitForFunction(() => document.querySelectorAll("#dlq tbody tr[data-id]").length === 3, null, { timeout: T });
    const before = num(await page.textContent("#m-dlq"));
    step(`filtered to subscription other: 3 rows (${await page.textContent("#dlq-total")}), ${before} dead letters in all`);
    await page.click("#dlq-purge-all");
    await page.locator("#confirm[open]").waitFor({ timeout: T });
    const question = await page.textContent("#confirm-text");
    step("confirmation: " + question);
    await shot("purge-filter-confirm");
    await page.click("#confirm-ok");
    await page.locator("#dlq-result", { hasText: "Purged" }).waitFor({ timeout: T });
    const said = await page.textContent("#dlq-result");
    await page.waitForFunction((b) => Number(document.querySelector("#m-dlq").textContent) < b, before, { timeout: T });
    await page.waitForTimeout(1500); // the next stats event
    const after = num(await page.textContent("#m-dlq"));
    step(`after "Purge all matching": ${said} dead letters ${before} -> ${after}`);
    await view("dlq");
    await shot("purge-filter-after");
    if (after !== before - 3) fail(`"Purge all matching" with the subscription filter (3 listed) purged ${before - after} of ${before} ("${said}"; it asked "${question}")`);
    if (!/\b3 dead letter/.test(question) || !/subscription=other/.test(question)) fail(`the confirmation does not name the count (3) and the filter (subscription=other): "${question}"`);
  } else if (mode === "trace") {
    const corr = process.env.CORRELATION_ID;
    await page.goto(url + "#trace/" + corr);
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.locator("[data-test=trace-tree] [data-test=trace-node]").first().waitFor({ timeout: T });
    const tree = await page.evaluate(() => {
      const walk = (li) => ({
        topic: li.querySelector(":scope > .tnode .t").textContent,
        text: li.querySelector(":scope > .tnode").textContent,
        link: (li.querySelector(":scope > .tnode a.error") || {}).getAttribute?.call(li.querySelector(":scope > .tnode a.error"), "href") || null,
        calls: [...li.querySelectorAll(":scope > ul.tdeliveries > li")].map((d) => d.textContent),
        children: [...li.querySelectorAll(":scope > ul:not(.tdeliveries) > li")].map(walk),
      });
      return { head: document.querySelector("#trace-out > p").textContent, roots: [...document.querySelectorAll("[data-test=trace-tree] > li")].map(walk) };
    });
    step("trace: " + JSON.stringify(tree, null, 1));
    await shot("trace");
    if (!/2 message\(s\)/.test(tree.head) || !/3 handler call\(s\)/.test(tree.head)) fail("trace heading: " + tree.head);
    if (tree.roots.length !== 1 || tree.roots[0].topic !== "orders.placed") fail("one root orders.placed expected");
    const root = tree.roots[0];
    if (root.calls.length !== 1 || !/→ orders/.test(root.calls[0]) || !/handled/.test(root.calls[0]) || !/attempt 1/.test(root.calls[0])) fail("orders' call: " + JSON.stringify(root.calls));
    if (root.children.length !== 1 || root.children[0].topic !== "billing.charge") fail("billing.charge is not orders.placed's child");
    const child = root.children[0];
    if (child.calls.length !== 2 || !/attempt 1/.test(child.calls[0]) || !/attempt 2/.test(child.calls[1]) || !child.calls.every((c) => /→ billing/.test(c) && /failed/.test(c) && /downstream timed out/.test(c))) fail("billing's calls (2 failed attempts in order): " + JSON.stringify(child.calls));
    if (child.link !== "#dlq/" + encodeURIComponent(process.env.CHILD_ID)) fail("billing.charge not linked to its dead letter: " + child.link);
    await page.click("[data-test=trace-tree] a.error");
    await page.locator("#dlq-detail:not([hidden]) h3").waitFor({ timeout: T });
    const d = await page.textContent("#dlq-detail");
    if (!d.includes("billing.charge") || !d.includes("downstream timed out")) fail("the dead-letter link opens: " + d.slice(0, 300));
    await shot("trace-dlq");
    if (errors.length) fail("errors: " + errors.join("; "));
  } else if (mode === "expired") {
    const exp = Number(process.env.EXP_MS);
    await page.goto(url);
    await page.locator("#login[open]").waitFor({ timeout: T });
    await page.fill("#login-token", process.env.JWT);
    await page.press("#login-token", "Enter");
    await page.locator("#conn.live").waitFor({ timeout: T });
    step(`live with the JWT, ${exp - Date.now()} ms before it expires`);
    await shot("expired-live");
    await page.waitForFunction(() => !document.querySelector("#conn").classList.contains("live"), null, { timeout: exp - Date.now() + 8000 });
    const lag = Date.now() - exp;
    // What the operator sees within 3 s of that.
    await page.waitForTimeout(3000);
    const seen = await page.evaluate(() => ({
      conn: document.querySelector("#conn-text").textContent,
      banner: document.querySelector("#banner").hidden ? "" : document.querySelector("#banner-text").textContent,
      dialog: document.querySelector("#login").open,
      reason: document.querySelector("#login-error").textContent,
    }));
    step(`${lag} ms after exp the page stopped being live; 3 s later: ${JSON.stringify(seen)}`);
    await shot("expired-after");
    if (lag < -1000) fail(`the page left live ${-lag} ms before the token expired`);
    if (!seen.dialog || !/expired/i.test(seen.reason)) fail("the page does not say the token expired: " + JSON.stringify(seen));
    if (/lost/.test(seen.banner)) fail("the page blames the connection, not the token: " + seen.banner);
  } else if (mode === "trace-scale") {
    await page.goto(url + "#dlq");
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.locator("#dlq tbody tr[data-id]").first().waitFor({ timeout: T });
    const heading = await page.textContent("#dlq-total");
    step(`dlq with 1,101 dead letters: ${await page.locator("#dlq tbody tr[data-id]").count()} rows, heading ${heading}, card ${await page.textContent("#m-dlq")}`);
    if (!/100 shown of 1101/.test(heading)) fail("the heading does not say the list is partial: " + heading);
    await shot("trace-scale-dlq");
    const t0 = Date.now();
    await view("trace/" + process.env.CORRELATION_ID);
    await page.locator("[data-test=trace-tree] [data-test=trace-node]").first().waitFor({ timeout: T });
    step(`trace rendered in ${Date.now() - t0} ms`);
    const node = await page.textContent("[data-test=trace-tree] [data-test=trace-node]");
    const calls = await page.locator("[data-test=trace-delivery]").allTextContents();
    const link = await page.locator("[data-test=trace-tree] a.error").count();
    step(`trace node: ${node.slice(0, 120)}; calls ${JSON.stringify(calls)}; dead-letter links ${link}`);
    await shot("trace-scale");
    if (!calls.some((c) => /rejected/.test(c) && /card declined/.test(c))) fail("the rejected call is not shown: " + JSON.stringify(calls));
    if (link !== 1) fail("the failed billing.charge (dead-lettered, the newest of 1,101 dead letters) is not marked failed nor linked to its dead letter " + process.env.CHILD_ID);
  } else if (mode === "restart") {
    const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    await page.goto(url + "#dlq");
    await page.locator("#conn.live").waitFor({ timeout: T });
    await waitText("#m-handled", /^7$/);
    await page.waitForFunction(() => document.querySelectorAll("#dlq tbody tr[data-id]").length === 2, null, { timeout: T });
    await page.evaluate(() => { window.__same = true; });
    await shot("restart-before");
    console.log("RESTART_NODE");
    const { value } = await lines.next();
    if ((value || "").trim() !== "RESTARTED") fail("driver said " + value);
    await page.locator("#conn.live").waitFor({ timeout: 15000 });
    // The new node's figures, once the page is back: 3 acked, 1 dead letter (and its list).
    await waitText("#m-handled", /^3$/).catch(async () => fail("handled after the restart: " + await page.textContent("#m-handled")));
    await waitText("#m-dlq", /^1$/).catch(async () => fail("dead letters after the restart: " + await page.textContent("#m-dlq")));
    await page.waitForFunction(() => document.querySelectorAll("#dlq tbody tr[data-id]").length === 1, null, { timeout: T })
      .catch(async () => fail("the open dead-letter list after the restart: " + await page.textContent("#dlq tbody")));
    const err = await page.textContent("#dlq tbody tr[data-id] td:nth-child(6)");
    if (err !== "declined on node 3") fail("the list shows the old node's dead letter: " + err);
    const heading = await page.textContent("#dlq-total");
    if (heading !== "(1)") fail("heading after the restart: " + heading);
    await view("overview");
    await page.waitForFunction(() => { const r = [...document.querySelectorAll("#queues tbody tr")].find((tr) => tr.cells[0].textContent === "pay"); return r && r.cells[5].textContent === "3" && r.cells[7].textContent === "1"; }, null, { timeout: T })
      .catch(async () => fail("queue row after the restart: " + await page.textContent("#queues tbody")));
    const published = await page.textContent("#m-published");
    step(`after the restart: handled 3, dead letters 1 (list: "${err}"), published ${published}`);
    if (published !== "4") fail("published after the restart: " + published);
    if (!(await page.evaluate(() => window.__same))) fail("the page reloaded");
    await shot("restart-after");
  } else if (mode === "replay-selection") {
    const total = Number(process.env.TOTAL);
    await page.goto(url + "#dlq");
    await page.locator("#conn.live").waitFor({ timeout: T });
    await page.waitForFunction((n) => document.querySelectorAll("#dlq tbody tr[data-id]").length === n, total, { timeout: T });
    const rowOf = (topic) => page.locator("#dlq tbody tr[data-id]").filter({ has: page.locator("td:nth-child(3) code", { hasText: new RegExp("^" + topic.replace(".", "\\.") + "$") }) });
    for (const r of [rowOf("other.a").nth(0), rowOf("other.a").nth(1), rowOf("stubborn.x")]) await r.locator("input[type=checkbox]").check();
    const label = await page.textContent("#dlq-replay");
    if (label !== "Replay selected (3)") fail("the replay button says " + label);
    await page.click("#dlq-replay");
    await page.locator("#confirm[open]").waitFor({ timeout: T });
    step("confirmation: " + await page.textContent("#confirm-text"));
    await page.click("#confirm-ok");
    await page.waitForFunction(() => { const t = document.querySelector("#dlq-result").textContent; return /dead-lettered again/.test(t) && (t.match(/handled by other ✓/g) || []).length === 2; }, null, { timeout: T })
      .catch(async () => fail("the replay result line: " + await page.textContent("#dlq-result")));
    const said = await page.textContent("#dlq-result");
    step("replay result: " + said);
    if (!/Replayed 3/.test(said) || !/dead-lettered again: still out of stock/.test(said)) fail("the result line: " + said);
    await waitText("#m-dlq", new RegExp("^" + (total - 2) + "$"));
    await page.waitForFunction((n) => document.querySelectorAll("#dlq tbody tr[data-id]").length === n, total - 2, { timeout: T })
      .catch(async () => fail("rows after the replay: " + await page.locator("#dlq tbody tr[data-id]").count()));
    if (await rowOf("other.a").count() !== 0) fail("a handled replay is still listed");
    if (await rowOf("stubborn.x").count() !== 1) fail("the message dead-lettered again is not listed once");
    await shot("replay-selection");
    if (errors.length) fail("errors: " + errors.join("; "));
  } else fail("unknown MODE " + mode);
  step("ok");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
