// Shared set-up of the browser tests: Debian's headless chromium driven by
// playwright-core, a fresh profile, screenshots under $CORRAL_ARTIFACTS.
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const URL = need("CORRAL_URL");
export const USER = need("CORRAL_USER");
export const PASSWORD = need("CORRAL_PASSWORD");
const ARTIFACTS = process.env.CORRAL_ARTIFACTS ?? "target/web-artifacts";

function need(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
}

export async function browser(testName) {
  const dir = join(ARTIFACTS, testName);
  // Only this run's screenshots: numbered steps of an older run would mislead.
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const b = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "corral-chromium-")), {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // The daemon's certificate is self-signed (its own, in <state>/tls).
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const page = b.pages()[0] ?? (await b.newPage());
  page.on("dialog", (d) => d.accept());
  page.on("pageerror", (e) => console.error("page error:", e.message));
  // A request that never got an answer says nothing on the page: log it for the failure report.
  page.on("requestfailed", (r) => console.error("request failed:", r.method(), r.url(), r.failure()?.errorText));
  let n = 0;
  const shot = async (step) => {
    n += 1;
    await page.screenshot({ path: join(dir, `${String(n).padStart(2, "0")}-${step}.png`), fullPage: true });
    console.log(`step ${n}: ${step}`);
  };
  return { b, page, shot };
}

export async function login(page) {
  await page.goto(URL + "/");
  await page.fill("input[name=username]", USER);
  await page.fill("input[name=password]", PASSWORD);
  await page.click("button[type=submit]");
  await page.waitForSelector(`[data-testid=whoami]:has-text("${USER}")`, { timeout: 15000 });
}

export async function run(fn) {
  try {
    await fn();
    process.exit(0);
  } catch (e) {
    console.error(e);
    process.exit(1);
  }
}
