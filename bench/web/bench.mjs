// Times a web console in Debian's headless chromium (playwright-core), one target per
// run, N rounds, a fresh browser context per round; prints one JSON object of samples
// (milliseconds) on stdout. bench/web.py starts the services and makes the data.
//
//   TARGET=corral|cockpit URL=... USER=... PASSWORD=... ROUNDS=N NVMS=1000 \
//   PREFIX=bench-web- node bench/web/bench.mjs
import { chromium } from "playwright-core";

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
const TARGET = env("TARGET"), URL = env("URL"), USER = env("USER_NAME"), PASSWORD = env("PASSWORD");
const ROUNDS = Number(env("ROUNDS")), NVMS = Number(env("NVMS")), PREFIX = env("PREFIX");
// Generous: Cockpit Machines draws 1000 domains slowly on a 2-core TCG host.
const TIMEOUT = 300000;
// The name the filter is timed with: exactly one VM matches it.
const LAST = `${PREFIX}${String(NVMS - 1).padStart(4, "0")}`;

// First contentful paint of the current document, relative to its navigation start.
const fcp = (frame) => frame.evaluate(() => new Promise((res) => {
  const get = () => performance.getEntriesByName("first-contentful-paint")[0];
  const e = get();
  if (e) return res(e.startTime);
  new PerformanceObserver((l) => res(l.getEntries()[0].startTime)).observe({ type: "paint", buffered: true });
}));
// Milliseconds since the navigation of `frame` started (performance.now() is relative to it).
const since = (frame) => frame.evaluate(() => performance.now());

const corral = {
  async login(page) {
    await page.goto(URL + "/");
    await page.fill("input[name=username]", USER);
    await page.fill("input[name=password]", PASSWORD);
    await page.click("button[type=submit]");
    await page.waitForSelector("[data-testid=whoami]", { timeout: TIMEOUT });
  },
  async dashboard(page) {
    await page.goto(URL + "/");
    // Data on screen: host CPU is a number (not the "–" placeholder) and the
    // VMs-by-state card lists the stopped VMs.
    await page.waitForFunction((n) => {
      const cpu = document.querySelector("[data-testid=host-cpu]")?.textContent ?? "";
      const cards = [...document.querySelectorAll(".card")].map((c) => c.textContent);
      return cpu.includes("%") &&
        cards.some((t) => t.startsWith("VMs by state") && new RegExp(`stopped: ${n}`).test(t));
    }, NVMS, { timeout: TIMEOUT, polling: "raf" });
    const data = await since(page);
    return { fcp: await fcp(page), data };
  },
  async list(page) {
    await page.goto(URL + "/vms");
    // Every VM is a row: done when all N are drawn, the first and the last among them.
    await page.waitForFunction(([n, first, last]) => {
      const body = document.querySelector("tbody");
      return !!body && body.rows.length === n && body.textContent.includes(first) && body.textContent.includes(last);
    }, [NVMS, `${PREFIX}0000`, LAST], { timeout: TIMEOUT, polling: "raf" });
    const listed = await since(page);
    const fc = await fcp(page);
    const t0 = Date.now();
    await page.fill("input[placeholder='Search by name']", LAST);
    await page.waitForFunction((last) => {
      const rows = document.querySelectorAll("tbody tr");
      return rows.length === 1 && rows[0].textContent.includes(last);
    }, LAST, { timeout: TIMEOUT, polling: "raf" });
    return { fcp: fc, listed, filter: Date.now() - t0 };
  },
};

// Cockpit: the shell page hosts each tool in an iframe (cockpit1:localhost/<tool>);
// "first paint" is the shell document's, data on screen is timed inside the frame.
const frameOf = async (page, name) => {
  const h = await page.waitForSelector(`iframe[name="cockpit1:localhost/${name}"]`, { timeout: TIMEOUT, state: "attached" });
  return h.contentFrame();
};
const cockpit = {
  async login(page) {
    await page.goto(URL + "/");
    // Log in with administrative access (Cockpit's "superuser" choice, kept per user in
    // localStorage): without it Cockpit Machines shows only the user's own session VMs.
    await page.evaluate((u) => localStorage.setItem(`superuser:${u}`, "any"), USER);
    await page.fill("#login-user-input", USER);
    await page.fill("#login-password-input", PASSWORD);
    await page.click("#login-button");
    await frameOf(page, "system");
    // This host has no hardware virtualization for libvirt's QEMU user (TCG only), and
    // Cockpit Machines would show its "disabled" page instead of the list; its "Ignore"
    // button stores this flag (per browser profile, so once per fresh context here).
    await page.evaluate(() => localStorage.setItem("virtualization-disabled-ignored", "true"));
  },
  async dashboard(page) {
    await page.goto(URL + "/system");
    const f = await frameOf(page, "system");
    // The overview's usage card: CPU and memory numbers drawn.
    await f.waitForFunction(() => {
      const t = document.body ? document.body.innerText : "";
      return /CPU/.test(t) && /Memory/.test(t) && /\d+(\.\d+)? ?(%|GiB|MiB)/.test(t) &&
        document.querySelector(".system-usage, #system_information_usage, [class*=usage]") !== null;
    }, null, { timeout: TIMEOUT, polling: "raf" });
    const data = await since(page);
    return { fcp: await fcp(page), data };
  },
  async list(page) {
    await page.goto(URL + "/machines");
    const f = await frameOf(page, "machines");
    // Cockpit Machines draws every domain as a table row (no paging): wait for the
    // last one.
    await f.waitForFunction(([n, last]) => {
      const rows = document.querySelectorAll("table tbody tr");
      return rows.length >= n && document.body.innerText.includes(last);
    }, [NVMS, LAST], { timeout: TIMEOUT, polling: 100 });
    const listed = await since(page);
    const fc = await fcp(page);
    const t0 = Date.now();
    await f.fill("input[placeholder*='Filter']", LAST);
    await f.waitForFunction((last) => {
      const rows = [...document.querySelectorAll("table tbody tr")].filter((r) => r.offsetParent !== null);
      return rows.length === 1 && rows[0].innerText.includes(last);
    }, LAST, { timeout: TIMEOUT, polling: 100 });
    return { fcp: fc, listed, filter: Date.now() - t0 };
  },
};

const t = TARGET === "corral" ? corral : cockpit;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const out = { dash_fcp: [], dash_data: [], list_fcp: [], list_listed: [], list_filter: [] };
// A round that does not finish (a list that never completes) is recorded, not fatal:
// the rounds that did finish still count, and the failure is part of the result.
const failed = [];
try {
  for (let i = 0; i < ROUNDS; i++) {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
    try {
      const page = await ctx.newPage();
      await t.login(page);
      // A blank page in between, so each timed navigation is a fresh document load.
      await page.goto("about:blank");
      const d = await t.dashboard(page);
      await page.goto("about:blank");
      const l = await t.list(page).catch(async (e) => {
        // What was on screen when it gave up, for whoever reads the result.
        await page.screenshot({ path: `/tmp/web-bench-${TARGET}-failed.png`, fullPage: true }).catch(() => {});
        throw e;
      });
      out.dash_fcp.push(d.fcp); out.dash_data.push(d.data);
      out.list_fcp.push(l.fcp); out.list_listed.push(l.listed); out.list_filter.push(l.filter);
      console.error(`web bench ${TARGET} round ${i + 1}/${ROUNDS}: dash fcp ${d.fcp.toFixed(0)} data ${d.data.toFixed(0)}, list ${l.listed.toFixed(0)}, filter ${l.filter}`);
    } catch (e) {
      failed.push(`round ${i + 1}: ${String(e.message).split("\n")[0]}`);
      console.error(`web bench ${TARGET} round ${i + 1}/${ROUNDS} failed: ${e.message}`);
    } finally {
      await ctx.close();
    }
  }
} finally {
  await browser.close();
}
if (!out.dash_fcp.length) throw new Error(`every round failed: ${failed.join("; ")}`);
out.failed = failed;
console.log(JSON.stringify(out));
