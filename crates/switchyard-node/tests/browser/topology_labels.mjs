// The topology's rate labels with many edges into one node (fixold): publishers seen sending
// to one topic pattern (60 by default; PUBLISHERS=260 for the 250+ rows first seen, slow: the
// crossing check samples every edge), served from the dashboard's own assets with the API
// mocked (no node needed). Checks that no two rate labels overlap and that no other edge runs
// through a label (before the fix 59 of 62 were crossed by the bundle converging on the
// topic), and takes screenshots of the fitted graph (SCREENSHOT) and zoomed in (`-zoomed`).
// Run: `node topology_labels.mjs` (CHROMIUM defaults to /usr/bin/chromium).
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const assets = join(dirname(fileURLToPath(import.meta.url)), "../../assets/dashboard");
const shot = process.env.SCREENSHOT || "/tmp/topology-labels.png";
const N = Number(process.env.PUBLISHERS || 60);
const observed = [];
for (let i = 0; i < N; i++) {
  const from = "publisher-" + String(i).padStart(3, "0");
  observed.push({ from, to: "orders-sink", topic: "orders.placed", rate_per_s: 1 + (i % 17), count: 100 + i, declared: false });
}
const topology = { edges: [{ pattern: "orders.#", subscription: "orders-sink", kind: "event" }, { pattern: "audit.#", subscription: "auditor", kind: "event" }], observed, violations: [] };
const types = { js: "text/javascript", css: "text/css", html: "text/html" };
const profile = mkdtempSync(join(tmpdir(), "switchyard-topology-"));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = ctx.pages()[0] || await ctx.newPage();
  await page.route("**/*", (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path.startsWith("/v1/topology")) return route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(topology) });
    if (path.startsWith("/v1/")) return route.fulfill({ status: 200, contentType: "application/json", body: "{}" });
    let file = path === "/" || path === "/dashboard" || path === "/dashboard/" ? "index.html" : path.replace(/^\/dashboard\//, "");
    if (file === "uPlot.min.css" || file === "uPlot.iife.min.js") file = "vendor/" + file;
    try {
      return route.fulfill({ status: 200, contentType: types[file.split(".").pop()] || "application/octet-stream", body: readFileSync(join(assets, file)) });
    } catch (_) {
      return route.fulfill({ status: 404, body: "" });
    }
  });
  await page.goto("http://dashboard.test/dashboard/#topology");
  await page.locator("#topo [data-test=edge-rate]").first().waitFor({ timeout: 15000 });
  await page.waitForFunction(() => [...document.querySelectorAll("#topo [data-test=edge-rate]")].some((t) => /msg\/s/.test(t.textContent)), null, { timeout: 15000 });
  // Every pair of rate labels the page shows, in screen pixels: none may overlap.
  const overlaps = async () => page.evaluate(() => {
    const boxes = [...document.querySelectorAll("#topo [data-test=edge-rate]")]
      .filter((t) => t.textContent && getComputedStyle(t).display !== "none" && getComputedStyle(t).visibility !== "hidden")
      .map((t) => t.getBoundingClientRect()).filter((r) => r.width > 0);
    let n = 0;
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) n++;
    }
    // A label another edge runs through (the bundle converging on the topic) is unreadable
    // too: sample every edge's path, count the labels crossed by an edge not their own.
    const labels = [...document.querySelectorAll("#topo [data-test=edge-rate]")]
      .filter((t) => t.textContent).map((t) => ({ edge: t.dataset.edge, r: t.getBBox() }));
    let crossed = 0;
    const G = 8, grid = new Map(); // cell "x,y" → the edges with a point in it
    for (const p of document.querySelectorAll("#topo path.edge")) {
      const len = p.getTotalLength();
      for (let s = 0; s <= len; s += 3) {
        const q = p.getPointAtLength(s), k = Math.floor(q.x / G) + "," + Math.floor(q.y / G);
        if (!grid.has(k)) grid.set(k, []);
        grid.get(k).push({ edge: p.dataset.edge, x: q.x, y: q.y });
      }
    }
    for (const l of labels) {
      const r = l.r;
      let hit = false;
      for (let gx = Math.floor(r.x / G); gx <= Math.floor((r.x + r.width) / G) && !hit; gx++)
        for (let gy = Math.floor(r.y / G); gy <= Math.floor((r.y + r.height) / G) && !hit; gy++)
          hit = (grid.get(gx + "," + gy) || []).some((q) => q.edge !== l.edge && q.x > r.x && q.x < r.x + r.width && q.y > r.y && q.y < r.y + r.height);
      if (hit) crossed++;
    }
    return { shown: boxes.length, overlapping: n, crossed };
  });
  const fitted = await overlaps();
  await page.screenshot({ path: shot });
  // Zoomed in twice, near the topic (the edges' target end).
  await page.click("#zoom-in"); await page.click("#zoom-in"); await page.click("#zoom-in");
  const zoomed = await overlaps();
  await page.screenshot({ path: shot.replace(/\.png$/, "-zoomed.png") });
  console.log(JSON.stringify({ publishers: N, fitted, zoomed, zoom: await page.textContent("#zoom-level") }));
  if (fitted.overlapping || zoomed.overlapping || fitted.crossed) { console.error(`rate labels overlap or are crossed by other edges: fitted ${JSON.stringify(fitted)}, zoomed ${JSON.stringify(zoomed)}`); process.exitCode = 1; }
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
