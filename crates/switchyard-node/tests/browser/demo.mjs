// Drives the dashboard and the app page of a real `switchyard serve --demo` process in headless
// Chromium (run by crates/switchyard-cli/tests/demo_browser.rs, which starts the binary and
// passes DASHBOARD_URL, SCREENSHOT_DIR, CHROMIUM). Nothing is staged: everything the page
// shows comes from the demo's own trickle of runs. Exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = process.env.DASHBOARD_URL;
const shots = process.env.SCREENSHOT_DIR;
const profile = mkdtempSync(join(tmpdir(), "switchyard-demo-"));
const T = 20000;
const step = (s) => console.log("demo: " + s);
const num = (s) => Number(String(s).replace(/[^\d.]/g, ""));
async function shot(page, name) {
  const text = await page.evaluate(() => document.body.innerText);
  if (/\[object \w+\]|undefined|NaN/.test(text)) throw new Error(`${name}: the page shows a broken value: ${text.match(/.{0,60}(\[object \w+\]|undefined|NaN).{0,60}/s)[0]}`);
  await page.screenshot({ path: join(shots, name), fullPage: true });
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

  // Overview: the demo's traffic makes the handled count grow while we watch.
  await page.goto(url + "/");
  await page.locator("#conn.live").waitFor({ timeout: T });
  await page.waitForFunction(() => /\d/.test(document.querySelector("#m-handled").textContent), null, { timeout: T });
  const first = await page.textContent("#m-handled");
  await page.waitForFunction((v) => document.querySelector("#m-handled").textContent !== v, first, { timeout: T });
  const second = await page.textContent("#m-handled");
  if (num(second) <= num(first)) throw new Error(`handled did not grow: ${first} -> ${second}`);
  // Every 4th run of the trickle names a missing dataset: dead letters appear on their own.
  await page.waitForFunction(() => Number(document.querySelector("#m-dlq").textContent.replace(/\D/g, "")) >= 1, null, { timeout: T });
  step(`handled ${first} -> ${second}, dead letters ${await page.textContent("#m-dlq")}`);
  await shot(page, "demo-01-overview.png");

  // Topology: the reference app's layers, with traffic observed on declared edges.
  await page.click("nav a[data-view=topology]");
  for (const name of ["frontend", "cpm", "staging-manager", "staging-processor", "analytics-manager"]) {
    await page.locator(`#topo g.node[aria-label=${name}]`).waitFor({ timeout: T });
  }
  const nodes = await page.locator("#topo g.node").count();
  if (nodes < 20) throw new Error(`topology shows ${nodes} components, the reference app declares more than 20`);
  await page.locator("#topo [data-test=edge-rate]", { hasText: "msg/s" }).first().waitFor({ timeout: T });
  // The whole graph is in view at first (fitted), and no two edge labels are drawn over
  // each other.
  const layout = await page.evaluate(() => {
    const g = document.querySelector("#topo-vp").getBoundingClientRect(), s = document.querySelector("#topo").getBoundingClientRect();
    const boxes = [...document.querySelectorAll("#topo-vp > text.elabel, #topo-vp > text.rate")].map((t) => t.getBoundingClientRect()).filter((r) => r.width > 0);
    let overlaps = 0;
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1) overlaps++;
    }
    return { fits: g.right <= s.right + 1 && g.bottom <= s.bottom + 1, overlaps, labels: boxes.length, zoom: document.querySelector("#zoom-level").textContent };
  });
  if (!layout.fits) throw new Error(`the topology does not fit its view at first (zoom ${layout.zoom})`);
  if (layout.overlaps) throw new Error(`${layout.overlaps} pairs of edge labels overlap`);
  await shot(page, "demo-02-topology.png");
  step(`topology: ${nodes} components fitted at ${layout.zoom}, ${layout.labels} edge labels without overlap, observed traffic shown`);

  // Dead letters: the missing dataset's failure, inspected, then its trace.
  await page.click("nav a[data-view=dlq]");
  const row = page.locator("#dlq tbody tr", { hasText: "missing.csv" }).first();
  await row.waitFor({ timeout: T });
  await row.locator("td:nth-child(2) a").click();
  await page.locator("#dlq-detail", { hasText: "MissingInput" }).waitFor({ timeout: T });
  await page.locator("#dlq-detail h4", { hasText: "Headers" }).waitFor({ timeout: T });
  await shot(page, "demo-03-dead-letter.png");
  await row.locator("td:last-child a").click();
  await page.locator("[data-test=trace-tree] [data-test=trace-node]").first().waitFor({ timeout: T });
  await page.locator("[data-test=trace-tree] [data-test=trace-node]", { hasText: "cpm.pipeline.request" }).first().waitFor({ timeout: T });
  await page.locator("[data-test=trace-tree] .tnode.failed").first().waitFor({ timeout: T });
  const traced = await page.locator("[data-test=trace-tree] [data-test=trace-node]").count();
  if (traced < 3) throw new Error(`the failed run's trace shows ${traced} messages, expected the request and its follow-ups`);
  await shot(page, "demo-04-trace.png");
  step(`trace of a failed run: ${traced} messages, the failure marked`);

  // Replay: a run of the trickle met a simulated outage of the report step's upstream; its
  // retries failed too and the error handler dead-lettered the report request. Replaying it
  // runs the step again, and the node reports the very message handled.
  await page.click("nav a[data-view=dlq]");
  const outage = page.locator("#dlq tbody tr", { hasText: "UpstreamUnavailable" }).first();
  await outage.waitFor({ timeout: T });
  const outageId = await outage.getAttribute("data-id");
  await outage.locator("td:nth-child(2) a").click();
  await page.locator("#dlq-detail", { hasText: "report-processor" }).waitFor({ timeout: T });
  await page.locator("#dlq-detail", { hasText: "report.render.execute" }).waitFor({ timeout: T });
  await page.click("#dlq-detail button:text-is('Replay this message')");
  await page.locator("#confirm[open]").waitFor({ timeout: T });
  await page.click("#confirm-ok");
  await page.locator("#dlq-result", { hasText: /handled by .*report-processor/ }).waitFor({ timeout: T });
  const result = await page.textContent("#dlq-result");
  if (/again|failed/.test(result)) throw new Error(`the replay was not handled cleanly: ${result}`);
  // It left the queue (the list reloaded without it).
  await page.waitForFunction((id) => !document.querySelector(`#dlq tbody tr[data-id="${id}"]`), outageId, { timeout: T });
  await shot(page, "demo-05-replayed.png");
  step(`replayed the outage's dead letter: ${result}`);

  // Health: the demo's node runs on the embedded log and is ready.
  await page.click("nav a[data-view=health]");
  await page.locator("[data-test=readiness]", { hasText: "ready" }).waitFor({ timeout: T });
  await page.locator("[data-test=transport]", { hasText: "log" }).waitFor({ timeout: T });
  await page.locator("[data-test=component-health]", { hasText: "cpm" }).first().waitFor({ timeout: T });
  // The app's health checker feeds it: every component has been seen (heartbeats).
  const seen = await page.locator("[data-test=component-health] [data-test=last-seen]", { hasText: "s ago" }).count();
  if (seen < 20) throw new Error(`only ${seen} components show when the health checker last saw them`);
  await shot(page, "demo-06-health.png");
  step(`health: ready on the log, ${seen} components seen by the health checker`);

  // The app page: the trickle's runs are in the history, completed ones and failed ones.
  await page.goto(url + "/app");
  await page.locator("#conn.ok").waitFor({ timeout: T });
  await page.locator("#runs .outcome-completed").first().waitFor({ timeout: T });
  await page.locator("#runs .outcome-failed").first().waitFor({ timeout: T });
  const runs = await page.locator("#runs tr[data-run]").count();
  await shot(page, "demo-07-app-history.png");
  step(`app page: ${runs} runs of the trickle listed`);

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  step("ok");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
