// Drives the dashboard in headless Chromium (run by tests/dashboard/main.rs, which starts the
// node and passes DASHBOARD_URL, CORRELATION_ID, SCREENSHOT_DIR, CHROMIUM). Exits non-zero
// on the first failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = process.env.DASHBOARD_URL;
const correlation = process.env.CORRELATION_ID;
const shots = process.env.SCREENSHOT_DIR;
const profile = mkdtempSync(join(tmpdir(), "switchyard-dashboard-"));
const T = 15000;
const step = (s) => console.log("dashboard: " + s);

const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = ctx.pages()[0] || await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.locator("#conn.live").waitFor({ timeout: T });

  // Live numbers change between two reads.
  await page.waitForFunction(() => /\d/.test(document.querySelector("#m-handled").textContent), null, { timeout: T });
  const first = await page.textContent("#m-handled");
  await page.waitForFunction((v) => document.querySelector("#m-handled").textContent !== v, first, { timeout: T });
  const second = await page.textContent("#m-handled");
  step(`handled ${first} -> ${second}`);
  if (Number(second.replace(/,/g, "")) <= Number(first.replace(/,/g, ""))) throw new Error(`handled did not grow: ${first} -> ${second}`);
  // A few seconds of chart, then the overview.
  await page.waitForFunction(() => (document.querySelector("#chart polyline")?.getAttribute("points") || "").split(" ").length >= 4, null, { timeout: T });
  const dl = await page.textContent("#m-dlq");
  if (dl.trim() !== "1") throw new Error(`dead letters card shows ${dl}, expected 1`);
  await page.locator("#queues tbody tr", { hasText: "billing" }).waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "01-overview.png"), fullPage: true });

  // The page says so when the node is unreachable, and recovers.
  await page.route("**/v1/stats", (r) => r.abort("connectionrefused"));
  await page.locator("#conn.down", { hasText: "reconnecting" }).waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "02-reconnecting.png") });
  await page.unroute("**/v1/stats");
  await page.locator("#conn.live").waitFor({ timeout: T });
  step("reconnecting… shown and recovered");

  // Subscriptions and one's detail.
  await page.click("nav a[data-view=subscriptions]");
  await page.locator("#subs tbody tr", { hasText: "billing" }).waitFor({ timeout: T });
  await page.click("#subs a:text-is('orders')");
  await page.locator("#sub-detail", { hasText: "orders.#" }).waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "03-subscriptions.png"), fullPage: true });
  step("subscriptions listed");

  // Topology: the graph has both subscriptions.
  await page.click("nav a[data-view=topology]");
  await page.locator("#topo g.node[aria-label=billing]").waitFor({ timeout: T });
  const nodes = await page.locator("#topo g.node").count();
  if (nodes < 4) throw new Error(`topology has ${nodes} nodes, expected the 2 patterns and 2 subscriptions`);
  await page.screenshot({ path: join(shots, "04-topology.png"), fullPage: true });
  step(`topology: ${nodes} nodes`);

  // Dead letters: inspect the one, replay it, see it handled.
  await page.click("nav a[data-view=dlq]");
  const row = page.locator("#dlq tbody tr", { hasText: "billing.charge" });
  await row.waitFor({ timeout: T });
  await row.locator("td:nth-child(2) a").click();
  await page.locator("#dlq-detail pre[data-test=payload]", { hasText: '"amount": 42' }).waitFor({ timeout: T });
  await page.locator("#dlq-detail", { hasText: "card declined" }).waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "05-dead-letter.png"), fullPage: true });
  await page.click("#dlq-detail button:text-is('Replay this message')");
  await page.locator("#confirm[open]").waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "06-confirm-replay.png") });
  await page.click("#confirm-ok");
  await page.locator("#dlq-result", { hasText: "handled by billing" }).waitFor({ timeout: T });
  await page.locator("#dlq tbody", { hasText: "No dead letters" }).waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "07-replayed.png"), fullPage: true });
  step("dead letter replayed and handled");

  // Trace by correlation id.
  await page.click("nav a[data-view=trace]");
  await page.fill("#trace-form input[name=id]", correlation);
  await page.press("#trace-form input[name=id]", "Enter");
  await page.locator("[data-test=trace-tree] [data-test=trace-node]", { hasText: "billing.charge" }).first().waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "08-trace.png"), fullPage: true });
  step("trace tree shown");

  // Narrow and dark.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.click("nav a[data-view=overview]");
  await page.screenshot({ path: join(shots, "09-narrow-dark.png"), fullPage: true });

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  step("ok");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
