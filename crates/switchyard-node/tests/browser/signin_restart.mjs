// The sign-in dialog and a node restart, in headless Chromium (run by tests/dashboard/main.rs,
// which starts a node with admin auth and passes DASHBOARD_URL, ADMIN_TOKEN, SCREENSHOT_DIR,
// CHROMIUM). The node is stopped and started again on request: this script prints
// `STOP_NODE` / `START_NODE` and waits for `STOPPED` / `STARTED` on stdin.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const url = process.env.DASHBOARD_URL;
const token = process.env.ADMIN_TOKEN;
const shots = process.env.SCREENSHOT_DIR;
const profile = mkdtempSync(join(tmpdir(), "switchyard-dashboard-"));
const T = 15000;
const step = (s) => console.log("signin-restart: " + s);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(request, answer) {
  console.log(request);
  const { value, done } = await lines.next();
  if (done || value.trim() !== answer) throw new Error(`${request}: expected ${answer}, got ${done ? "end of input" : value}`);
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

  // Auth is on: the page asks for a token before showing anything.
  await page.locator("#login[open]").waitFor({ timeout: T });
  await page.locator("#conn", { hasText: "sign-in needed" }).waitFor({ timeout: T });
  if ((await page.textContent("#m-handled")).trim() !== "–") throw new Error("figures shown before signing in");
  await page.screenshot({ path: join(shots, "13-sign-in.png") });

  // A wrong token is refused with the node's message, and the dialog asks again.
  await page.fill("#login-token", "not-the-token");
  await page.press("#login-token", "Enter");
  await page.locator("#login[open] #login-error", { hasText: "refused" }).waitFor({ timeout: T });
  const refused = await page.textContent("#login-error");
  step(`wrong token: ${refused}`);
  if (await page.locator("#conn.live").count()) throw new Error("live with a wrong token");
  await page.screenshot({ path: join(shots, "14-sign-in-refused.png") });

  // The right one shows the dashboard.
  await page.fill("#login-token", token);
  await page.click("#login-form button[value=ok]");
  await page.locator("#conn.live").waitFor({ timeout: T });
  await page.locator("#login[open]").waitFor({ state: "detached", timeout: T }).catch(async () => {
    if (await page.locator("#login[open]").count()) throw new Error("the dialog is still open after the right token");
  });
  await page.waitForFunction(() => /\d/.test(document.querySelector("#m-handled").textContent), null, { timeout: T });
  step("signed in, live");

  // The node stops: the page says it is reconnecting.
  await ask("STOP_NODE", "STOPPED");
  await page.locator("#banner:not([hidden])", { hasText: "reconnecting" }).waitFor({ timeout: T });
  await page.locator("#conn.down", { hasText: "reconnecting" }).waitFor({ timeout: T });
  // It keeps trying: the attempt count grows while the node is down.
  await page.locator("#banner", { hasText: "attempt 2" }).waitFor({ timeout: T });
  await page.screenshot({ path: join(shots, "15-reconnecting.png") });
  step(`node down: ${await page.textContent("#banner-text")}`);

  // A node on the same port: the page is live again on its own, still signed in.
  await ask("START_NODE", "STARTED");
  await page.locator("#conn.live").waitFor({ timeout: 20000 });
  await page.locator("#banner").waitFor({ state: "hidden", timeout: T });
  await page.waitForFunction(() => /\d/.test(document.querySelector("#m-handled").textContent), null, { timeout: T });
  if (await page.locator("#login[open]").count()) throw new Error("asked to sign in again after the restart");
  await page.screenshot({ path: join(shots, "16-reconnected.png") });
  step("live again after the restart");

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  step("ok");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
