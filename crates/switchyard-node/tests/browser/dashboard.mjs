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
// Every screenshot is of a page that rendered: no "[object …]" where a value should be.
async function shot(page, name, opts = {}) {
  const text = await page.evaluate(() => document.body.innerText);
  if (opts.fullPage) await page.evaluate(() => window.scrollTo(0, 0));
  if (/\[object \w+\]|undefined|NaN/.test(text)) throw new Error(`${name}: the page shows a broken value: ${text.match(/.{0,60}(\[object \w+\]|undefined|NaN).{0,60}/s)[0]}`);
  await page.screenshot(Object.assign({ path: join(shots, name) }, opts));
}

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
  // A few seconds of chart (uPlot on a canvas), then the overview.
  await page.locator("#chart canvas").first().waitFor({ timeout: T });
  await page.waitForFunction(() => Number(document.querySelector("#chart").dataset.points || 0) >= 4, null, { timeout: T });
  const dl = await page.textContent("#m-dlq");
  if (dl.trim() !== "1") throw new Error(`dead letters card shows ${dl}, expected 1`);
  await page.locator("#queues tbody tr", { hasText: "billing" }).waitFor({ timeout: T });
  // Handler latency: p50 / p95 / p99 from /v1/stats.
  const latency = await page.textContent("#m-latency");
  if (!/^[\d.,]+ \/ [\d.,]+ \/ [\d.,]+$/.test(latency.trim())) throw new Error(`latency card shows ${latency}`);
  await page.locator("#m-alerts", { hasText: "1" }).waitFor({ timeout: T });
  await page.locator("#window-summary", { hasText: "msg/s handled on average" }).waitFor({ timeout: T });
  step(`latency p50/p95/p99 ${latency} ms, 1 alert firing`);
  await shot(page, "01-overview.png", { fullPage: true });

  // The history is the node's: a page opened now shows the samples taken before it opened.
  const fresh = await ctx.newPage();
  await fresh.goto(url);
  await fresh.locator("#conn.live").waitFor({ timeout: T });
  await fresh.waitForFunction(() => Number(document.querySelector("#chart").dataset.points || 0) >= 4, null, { timeout: T });
  step(`a new tab shows ${await fresh.getAttribute("#chart", "data-points")} samples of history at once`);
  await fresh.close();

  // Subscriptions and one's detail.
  await page.click("nav a[data-view=subscriptions]");
  await page.locator("#subs tbody tr", { hasText: "billing" }).waitFor({ timeout: T });
  await page.click("#subs a:text-is('orders')");
  await page.locator("#sub-detail", { hasText: "orders.#" }).waitFor({ timeout: T });
  await page.locator("#sub-detail dd", { hasText: "ms over" }).waitFor({ timeout: T });
  await shot(page, "03-subscriptions.png", { fullPage: true });
  step("subscriptions listed");

  // Topology: the declared components, traffic on the declared edge, and the undeclared
  // edge seen in traffic (shop-ui publishes billing.charge without declaring it).
  await page.click("nav a[data-view=topology]");
  await page.locator("#topo g.node[aria-label=billing]").waitFor({ timeout: T });
  const nodes = await page.locator("#topo g.node").count();
  if (nodes < 3) throw new Error(`topology has ${nodes} nodes, expected the 3 declared components`);
  await page.locator("#topo [data-test=edge-rate]", { hasText: "msg/s" }).first().waitFor({ timeout: T });
  await page.locator("#topo path.edge.live").first().waitFor({ state: "attached", timeout: T });
  await page.locator("#topo path.edge.undeclared[data-test=edge-undeclared]").first().waitFor({ state: "attached", timeout: T });
  await page.locator("#topo text.elabel.undeclared", { hasText: "undeclared: billing.charge" }).waitFor({ timeout: T });
  await page.locator("#topo-source", { hasText: "not declared" }).waitFor({ timeout: T });
  await shot(page, "04-topology.png", { fullPage: true });
  step(`topology: ${nodes} nodes, observed rate ${await page.locator("#topo [data-test=edge-rate]", { hasText: "msg/s" }).first().textContent()}, undeclared edge shown`);

  // Zoom and pan: buttons, the wheel, a drag, and the keyboard.
  const scale = async () => Number((await page.getAttribute("#topo-vp", "transform")).match(/scale\(([\d.]+)\)/)[1]);
  const translate = async () => (await page.getAttribute("#topo-vp", "transform")).match(/translate\(([-\d.]+),([-\d.]+)\)/).slice(1).map(Number);
  await page.click("#zoom-in");
  await page.click("#zoom-in");
  if (Math.abs(await scale() - 1.5625) > 0.01) throw new Error(`two zoom-ins give scale ${await scale()}`);
  await page.locator("#zoom-level", { hasText: "156 %" }).waitFor({ timeout: T });
  const box = await page.locator("#topo").boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.wheel(0, 300);
  if (await scale() >= 1.5625) throw new Error(`the wheel did not zoom out: ${await scale()}`);
  const [x0, y0] = await translate();
  await page.mouse.move(box.x + 40, box.y + box.height - 30);
  await page.mouse.down();
  await page.mouse.move(box.x + 140, box.y + box.height - 10, { steps: 5 });
  await page.mouse.up();
  const [x1, y1] = await translate();
  if (!(x1 - x0 > 90 && y1 - y0 > 10)) throw new Error(`the drag did not pan: (${x0},${y0}) -> (${x1},${y1})`);
  if ((await page.evaluate(() => location.hash)) !== "#topology") throw new Error("the drag opened a node");
  await page.click("#zoom-fit");
  if (await page.getAttribute("#topo-vp", "transform") !== "translate(0.0,0.0) scale(1.000)") throw new Error("Fit did not reset the view");
  await page.focus("#topo");
  await page.keyboard.press("+");
  if (Math.abs(await scale() - 1.25) > 0.01) throw new Error(`keyboard + gives scale ${await scale()}`);
  const [kx] = await translate();
  await page.keyboard.press("ArrowRight");
  if ((await translate())[0] !== kx - 60) throw new Error("the arrow key did not pan");
  await page.keyboard.press("0");
  await page.click("#zoom-in");
  await page.click("#zoom-in");
  // Zoomed in, the subscriptions and the observed rate are still in view.
  await page.locator("#topo g.node[aria-label=orders]").waitFor({ timeout: T });
  await shot(page, "05-topology-zoomed.png", { fullPage: true });
  step(`topology zoomed to ${await page.textContent("#zoom-level")} and panned`);

  // Dead letters: inspect the one, replay it, see it handled.
  await page.click("nav a[data-view=dlq]");
  const row = page.locator("#dlq tbody tr", { hasText: "billing.charge" });
  await row.waitFor({ timeout: T });
  await row.locator("td:nth-child(2) a").click();
  await page.locator("#dlq-detail pre[data-test=payload]", { hasText: '"amount": 42' }).waitFor({ timeout: T });
  await page.locator("#dlq-detail", { hasText: "card declined" }).waitFor({ timeout: T });
  await page.locator("#dlq-detail h4", { hasText: "Headers" }).waitFor({ timeout: T });
  await shot(page, "06-dead-letter.png", { fullPage: true });
  // The time filter: nothing was dead-lettered in the future, the letter is back without it.
  await page.fill("#dlq-filter input[name=since]", "2999-01-01T00:00");
  await page.click("#dlq-filter button[type=submit]");
  await page.locator("#dlq tbody", { hasText: "No dead letters" }).waitFor({ timeout: T });
  if (!(await page.evaluate(() => location.hash)).includes("since=2999")) throw new Error("the time filter is not in the address");
  await shot(page, "07-dead-letters-filtered.png", { fullPage: true });
  await page.fill("#dlq-filter input[name=since]", "2000-01-01T00:00");
  await page.click("#dlq-filter button[type=submit]");
  await row.waitFor({ timeout: T });
  step("dead letters filtered by time");
  await row.locator("td:nth-child(2) a").click();
  await page.locator("#dlq-detail pre[data-test=payload]", { hasText: '"amount": 42' }).waitFor({ timeout: T });
  await page.click("#dlq-detail button:text-is('Replay this message')");
  await page.locator("#confirm[open]").waitFor({ timeout: T });
  await shot(page, "08-confirm-replay.png");
  await page.click("#confirm-ok");
  await page.locator("#dlq-result", { hasText: "handled by billing" }).waitFor({ timeout: T });
  await page.locator("#dlq tbody", { hasText: "No dead letters" }).waitFor({ timeout: T });
  await shot(page, "09-replayed.png", { fullPage: true });
  step("dead letter replayed and handled");

  // Trace by correlation id.
  await page.click("nav a[data-view=trace]");
  await page.fill("#trace-form input[name=id]", correlation);
  await page.press("#trace-form input[name=id]", "Enter");
  await page.locator("[data-test=trace-tree] [data-test=trace-node]", { hasText: "billing.charge" }).first().waitFor({ timeout: T });
  // The handler calls under the message: billing's refusal, then its handling of the replay.
  await page.locator("[data-test=trace-tree] [data-test=trace-delivery]", { hasText: "card declined" }).filter({ hasText: "billing" }).filter({ hasText: "rejected" }).first().waitFor({ timeout: T });
  await page.locator("[data-test=trace-tree] [data-test=trace-delivery]", { hasText: "handled" }).filter({ hasText: "billing" }).first().waitFor({ timeout: T });
  await shot(page, "10-trace.png", { fullPage: true });
  step("trace tree shown with the handler calls");

  // Alerts and health: the firing alert, the resolved one, readiness and the transport.
  await page.click("nav a[data-view=health]");
  await page.locator("#alerts-firing [data-test=alert-firing]", { hasText: "error-rate" }).waitFor({ timeout: T });
  await page.locator("#alerts-history [data-test=alert-history]", { hasText: "queue-depth" }).filter({ hasText: "resolved" }).waitFor({ timeout: T });
  await page.locator("[data-test=readiness]", { hasText: "ready" }).waitFor({ timeout: T });
  await page.locator("[data-test=liveness]", { hasText: "ok" }).waitFor({ timeout: T });
  await page.locator("[data-test=transport]", { hasText: "memory" }).waitFor({ timeout: T });
  // Component health: the declared components, orders healthy with its traffic.
  await page.locator("[data-test=component-health][data-status=healthy]", { hasText: "orders" }).waitFor({ timeout: T });
  await page.locator("[data-test=component-health]", { hasText: "billing" }).waitFor({ timeout: T });
  await page.locator("[data-test=transport-health]", { hasText: "connected" }).waitFor({ timeout: T });
  await page.locator("#health-handlers tbody tr", { hasText: "orders" }).waitFor({ timeout: T });
  await shot(page, "11-alerts-health.png", { fullPage: true });
  step("alerts and health shown");

  // Narrow and dark.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.click("nav a[data-view=overview]");
  await page.locator("#m-handled").waitFor({ timeout: T });
  await shot(page, "12-narrow-dark.png", { fullPage: true });

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  step("ok");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
