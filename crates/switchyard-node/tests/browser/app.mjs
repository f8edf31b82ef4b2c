// Drives the reference app's frontend (/app) in headless Chromium (run by tests/app/browser.rs,
// which starts a node with the app and passes APP_URL, SCREENSHOT_DIR, CHROMIUM). Prints what
// the page shows as `app: seen <key> <value>` for the Rust side to compare with the store.
// Exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = process.env.APP_URL;
const shots = process.env.SCREENSHOT_DIR;
const profile = mkdtempSync(join(tmpdir(), "switchyard-app-"));
// Generous: a run with a failure switch waits out its retries' backoff, and CI runs the app tests
// beside this one on 2 cores.
const T = 45000;
const step = (s) => console.log("app: " + s);
const seen = (k, v) => console.log(`app: seen ${k} ${String(v).trim()}`);
async function shot(page, name, opts = {}) {
  const text = await page.evaluate(() => document.body.innerText);
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
  await page.locator("#conn.ok").waitFor({ timeout: T });
  await page.locator("#runs").waitFor({ timeout: T });
  step("page loaded, live");

  // Keyboard: the form is reachable with Tab and the focus is visible.
  await page.keyboard.press("Tab"); // skip link
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement?.getAttribute("href") || document.activeElement?.id);
  if (!focused) throw new Error("nothing focused after Tab");

  // A generated run.
  await page.fill("#rows", "150");
  await page.fill("#run-id", "ui-ok");
  await shot(page, "01-start.png");
  await page.click("#start");
  await page.waitForURL(/#\/run\/ui-ok$/, { timeout: T });
  await page.locator("#run-status.outcome-completed").waitFor({ timeout: T });
  for (const d of ["staging", "quality", "analytics", "insight", "report", "recommendation"]) {
    const s = await page.textContent(`[data-step=${d}]`);
    if (s !== "completed") throw new Error(`domain ${d} shows ${s}`);
  }
  step("run completed, every domain completed");
  seen("run", "ui-ok");
  // The first run: the latency baselines are still warming up, nothing can be flagged.
  await page.locator("#perf-empty").waitFor({ timeout: T });
  if (await page.locator("#perf-flags li").count()) throw new Error("a warm-up run shows performance flags");
  seen("perf_empty", await page.textContent("#perf-empty"));
  await page.locator("#n-staged").waitFor({ timeout: T });
  seen("staged", await page.textContent("#n-staged"));
  seen("valid", await page.textContent("#n-valid"));
  seen("issues", await page.textContent("#n-issues"));
  seen("failed_rows", await page.locator("#failed-rows tbody tr").count());
  await shot(page, "02-run-quality.png", { fullPage: true });

  // Insights, by keyboard: the tabs move with the arrow keys.
  await page.focus("#tab-data");
  await page.keyboard.press("ArrowRight");
  if (await page.getAttribute("#tab-insights", "aria-selected") !== "true") throw new Error("ArrowRight did not select the insights tab");
  seen("revenue", await page.textContent("#n-revenue"));
  seen("anomalies", await page.locator("#anomalies tbody tr").count());
  seen("recommendations", await page.locator("#recs li").count());
  await shot(page, "03-insights.png", { fullPage: true });

  await page.click("#tab-report");
  await page.locator("#report h1").waitFor({ timeout: T });
  seen("report_h1", await page.textContent("#report h1"));
  const [md] = await Promise.all([page.waitForEvent("download"), page.click("#dl-md")]);
  if (md.suggestedFilename() !== "report-ui-ok.md") throw new Error("markdown file " + md.suggestedFilename());
  const [csv] = await Promise.all([page.waitForEvent("download"), page.click("#dl-csv")]);
  if (csv.suggestedFilename() !== "report-ui-ok.csv") throw new Error("csv file " + csv.suggestedFilename());
  await shot(page, "04-report.png", { fullPage: true });
  step("report rendered and downloaded");

  // A run with a failure switch.
  await page.goto(url + "#/");
  await page.locator("#runs").waitFor({ timeout: T });
  await page.fill("#run-id", "ui-fail");
  await page.selectOption("#fail", "analytics");
  await page.click("#start");
  await page.waitForURL(/#\/run\/ui-fail$/, { timeout: T });
  await page.locator("#run-status.outcome-failed").waitFor({ timeout: T });
  await page.locator("#dead-letters:not([hidden])").waitFor({ timeout: T });
  const failure = await page.textContent("#run-failure");
  if (!/analytics/.test(failure)) throw new Error("failure text: " + failure);
  if (await page.textContent("[data-step=analytics]") !== "failed") throw new Error("analytics step not failed");
  seen("failed_run", "ui-fail");
  seen("dead_letter", await page.textContent("#dead-letters tbody tr td code"));
  await shot(page, "05-failed-run.png", { fullPage: true });

  // A slow run: the analytics processor waits 400 ms; the node's tracker has a warm-up of two
  // samples, which the two runs before gave it, so the analytics steps are flagged.
  await page.goto(url + "#/");
  await page.locator("#runs").waitFor({ timeout: T });
  await page.fill("#run-id", "ui-slow");
  await page.selectOption("#fail", "slow:analytics");
  await page.click("#start");
  await page.waitForURL(/#\/run\/ui-slow$/, { timeout: T });
  await page.locator("#run-status.outcome-completed").waitFor({ timeout: T });
  await page.locator("#perf-flags li[data-flag=analytics-processor]").waitFor({ timeout: T });
  await page.locator("#steps [data-flag=analytics]").waitFor({ timeout: T });
  if (!(await page.locator("#perf-empty").isHidden())) throw new Error("empty state shown beside flags");
  seen("slow_run", "ui-slow");
  seen("slow_flag", await page.textContent("#perf-flags li[data-flag=analytics-processor]"));
  await shot(page, "06-slow-run.png", { fullPage: true });
  step("slow run flagged");

  // A run held in its analytics step until it is cancelled (so it is certainly still running
  // when the cancel arrives): the Cancel button shows on a running run only.
  await page.goto(url + "#/");
  await page.locator("#runs").waitFor({ timeout: T });
  await page.selectOption("#fail", "hold:analytics");
  await page.fill("#run-id", "ui-cancel");
  await page.click("#start");
  await page.waitForURL(/#\/run\/ui-cancel$/, { timeout: T });
  await page.locator("#run-status.outcome-running").waitFor({ timeout: T });
  await page.click("#cancel-run");
  await page.locator("#run-status.outcome-cancelled").waitFor({ timeout: T });
  if (!(await page.locator("#cancel-run").isHidden())) throw new Error("Cancel button still shown on a cancelled run");
  seen("cancelled_run", "ui-cancel");
  seen("cancelled_status", await page.textContent("#run-status"));
  await shot(page, "07-cancelled-run.png", { fullPage: true });
  step("run cancelled");

  // History: both runs with durations and outcomes.
  await page.click("text=← All runs");
  await page.locator("#runs tr[data-run=ui-fail] .outcome-failed").waitFor({ timeout: T });
  await page.locator("#runs tr[data-run=ui-ok] .outcome-completed").waitFor({ timeout: T });
  await page.locator("#runs tr[data-run=ui-slow] .flag").waitFor({ timeout: T });
  await shot(page, "08-history.png");

  // Narrow screen.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(url + "#/run/ui-ok");
  await page.locator("#run-status.outcome-completed").waitFor({ timeout: T });
  await shot(page, "09-narrow-run.png", { fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  step("done");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
