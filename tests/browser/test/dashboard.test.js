// The dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core (no browser download;
// CHROMIUM overrides the path), against a real `meterd run --simulate` (the demo load includes a tenant no one
// maps, so usage is held at risk). Checks: no console errors or page errors, the chart has exactly the hours
// `meterd report` has, the at-risk panel lists the held tenant, the page fits a phone's width. Screenshots go to
// target/test-artifacts/.
"use strict";
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");
const { chromium } = require("playwright-core");

const ROOT = path.resolve(__dirname, "../../..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, "target");
const METERD = process.env.METERD_BIN || path.join(TARGET, "debug", "meterd");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.join(TARGET, "test-artifacts");
// Generous bounds for a loaded 2-core machine: these are "give up" limits, never asserted durations.
const PATIENCE_MS = 120_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts the demo; resolves with its addresses once the ready line is printed. */
function startSimulate(tmp) {
  const proc = spawn(METERD, ["run", "--simulate", "--speed", "360"], {
    env: {
      ...process.env,
      TMPDIR: tmp,
      METERD_LISTEN: "127.0.0.1:0",
      METERD_ADMIN_LISTEN: "127.0.0.1:0",
      METERD_LOG: "off",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stdout });
    proc.on("exit", (code) => reject(new Error(`meterd exited (${code}) before its ready line`)));
    lines.once("line", (line) => {
      const tcp = /tcp=(\S+)/.exec(line);
      const admin = /admin=(\S+)/.exec(line);
      if (!tcp || !admin) return reject(new Error(`no tcp=/admin= on the ready line: ${line}`));
      // Keep draining the narration so the agent never blocks on a full pipe.
      lines.on("line", () => {});
      resolve({ proc, tcp: tcp[1], admin: admin[1] });
    });
  });
}

/** `meterd report --rows --format json` (JSON Lines) from the running agent: the CLI every operator uses. */
function report(tcp) {
  const out = execFileSync(METERD, ["report", "--target", tcp, "--rows", "--format", "json"], {
    encoding: "utf8",
    // Exit 0 (reconciled), 3 or 4 all print the report; the test asserts on its content.
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = out.trim().split("\n").map((l) => JSON.parse(l));
  return { rows: lines.filter((l) => l.type === "row"), totals: lines.find((l) => l.type === "totals") };
}

async function until(what, check) {
  const deadline = Date.now() + PATIENCE_MS;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last.ok) return last;
    await sleep(500);
  }
  assert.fail(`gave up waiting for ${what}: ${JSON.stringify(last && last.detail)}`);
}

test("the dashboard shows the report's hours and the held tenant, without console errors", async (t) => {
  assert.ok(fs.existsSync(METERD), `${METERD} missing: cargo build -p meterd first`);
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "meterd-browser-"));
  const agent = await startSimulate(tmp);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Root in containers has no user namespace for Chromium's sandbox.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  t.after(async () => {
    await browser.close();
    const exited = new Promise((r) => agent.proc.once("exit", r));
    agent.proc.kill("SIGTERM");
    await exited;
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  // A few simulated hours sealed and submitted, and the unmapped tenant's usage held.
  await until("three report hours and a held tenant", () => {
    const r = report(agent.tcp);
    const hours = new Set(r.rows.map((row) => row.hour));
    const held = r.rows.some((row) => row.customer.startsWith("tenant:") && row.reason.startsWith("at risk"));
    return { ok: hours.size >= 3 && held, detail: { hours: hours.size, held } };
  });

  const problems = [];
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console.error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });

  await page.goto(`http://${agent.admin}/`);
  await page.waitForSelector("body[data-ready='1']", { timeout: PATIENCE_MS });

  // The chart's hours are the report's hours (epoch seconds). Hours keep ending (every 10 s at 360x), so the
  // page's render is bracketed by two reports: when both have the same hours, the render between them must too.
  const hoursOf = (r) => [...new Set(r.rows.map((row) => Math.floor(row.hour / 1000)))].sort((a, b) => a - b);
  let compared = "never compared";
  const matched = await until("the chart to show the report's hours", async () => {
    const before = await page.getAttribute("body", "data-generated-at");
    const r1 = hoursOf(report(agent.tcp));
    await page.waitForFunction((g) => document.body.dataset.generatedAt !== g, before, { timeout: PATIENCE_MS });
    const chart = (await page.getAttribute("#chart", "data-hours")).split(",").filter(Boolean).map(Number);
    const r2 = hoursOf(report(agent.tcp));
    // An hour began meanwhile: compare again (the last real comparison is what a failure shows).
    if (JSON.stringify(r1) !== JSON.stringify(r2)) return { ok: false, detail: compared };
    compared = { chart, report: r1 };
    return { ok: chart.length >= 3 && JSON.stringify(chart) === JSON.stringify(r1), detail: compared };
  });
  assert.ok(matched.ok);
  // uPlot drew it: a canvas, and a legend entry per product x dimension of the demo.
  assert.equal(await page.locator("#chart canvas").count(), 1);
  const legend = await page.locator("#chart .u-legend").innerText();
  assert.match(legend, /demo \/ api_calls/);
  assert.match(legend, /demo \/ storage_gb_hours/);

  // The at-risk panel names the held tenant, with the report's reason.
  const held = page.locator("#at-risk tbody tr[data-kind='held']");
  await held.first().waitFor({ timeout: PATIENCE_MS });
  const heldText = await held.first().innerText();
  assert.match(heldText, /tenant:demo-unmapped-tenant/);
  assert.match(heldText, /at risk: tenant not mapped/);
  // Records by state and submission health are filled from the same document.
  assert.ok(Number(await page.locator("#states tr[data-state='accepted'] td:nth-child(2)").innerText()) > 0);
  assert.match(await page.locator("#accounts tbody").innerText(), /simulated/);
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard.png"), fullPage: true });

  // A phone: nothing wider than the screen (tables scroll inside their panel).
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction((g) => document.body.dataset.generatedAt !== g, await page.getAttribute("body", "data-generated-at"), { timeout: PATIENCE_MS });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a 390px phone`);
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-phone.png"), fullPage: true });

  assert.deepEqual(problems, [], "the page logged errors");
  assert.equal(await page.locator("#error").isHidden(), true, await page.locator("#error").innerText());
  console.log(`screenshots: ${path.join(ARTIFACTS, "dashboard.png")}, dashboard-phone.png`);
});
