// Live migration from the VM page: open Migrate, fetch the destination's certificate
// fingerprint (must be the one the test knows), a wrong token refused next to its input
// with nothing moved (both by Check and by Migrate), Check with the right token (every
// check passes), a slow migration (1 MiB/s) cancelled while it copies, then Migrate: the phase and figures live, Cancel offered while it can be,
// the result (destination host, downtime), and the page saying the VM moved — also after
// a reload, without polling the gone VM.
import { request } from "node:https";
import { browser, login, run, URL } from "./lib.mjs";

const VM = process.env.CORRAL_VM ?? "migvm";
const DEST = need("CORRAL_DEST_URL");
const TOKEN = need("CORRAL_DEST_TOKEN");
const FINGERPRINT = need("CORRAL_DEST_FINGERPRINT");
const DEST_HOST = need("CORRAL_DEST_HOST");
const T = { timeout: 30000 };

function need(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
}

/** The VMs the destination lists, asked with its token (its certificate is pinned by
 *  fingerprint, not by a CA). */
function destVms() {
  return new Promise((resolve, reject) => {
    const req = request(`${DEST}/api/v1/vms`, {
      headers: { Authorization: `Bearer ${TOKEN}` }, rejectUnauthorized: false,
      // A connection of its own each time: a resumed TLS session shows no certificate.
      agent: false,
    },
      (res) => {
        const fp = res.socket.getPeerCertificate().fingerprint256?.replaceAll(":", "").toLowerCase();
        if (fp !== FINGERPRINT) reject(new Error(`destination shows certificate ${fp}`));
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => res.statusCode === 200 ? resolve(JSON.parse(body).map((v) => v.spec.name))
          : reject(new Error(`destination: ${res.statusCode} ${body}`)));
      });
    req.on("error", reject);
    req.end();
  });
}

run(async () => {
  const { b, page, shot } = await browser("migrate");
  await login(page);
  await page.goto(URL + `/vms/${VM}`);
  await page.waitForSelector(".badge.running", T);
  await page.click("button:has-text('Migrate…')");
  const dialog = page.locator("[data-testid=migrate-dialog]");
  await dialog.waitFor(T);
  const check = dialog.locator("button:has-text('Check')"), migrate = dialog.locator("button:has-text('Migrate')");
  if (await check.isEnabled() || await migrate.isEnabled()) throw new Error("Check/Migrate enabled before the fingerprint");

  // The fingerprint, fetched by the server, is the destination's; the user ticks that
  // they compared it.
  await page.fill("input[name=migrate-url]", DEST);
  await dialog.locator("button:has-text('Fetch fingerprint')").click();
  await page.waitForFunction(() => document.querySelector("input[name=migrate-fingerprint]")?.value, null, T);
  const shown = await page.inputValue("input[name=migrate-fingerprint]");
  if (shown !== FINGERPRINT) throw new Error(`fingerprint shown ${shown}, want ${FINGERPRINT}`);
  if (await migrate.isEnabled()) throw new Error("Migrate enabled before the comparison is ticked");
  await page.check("input[name=migrate-compared]");
  await shot("fingerprint-fetched");

  // A wrong token: Check lists the failed check with its field and hint; Migrate is
  // refused with the error next to the token input; nothing moves.
  await page.fill("input[name=migrate-token]", "corral_not-a-token-of-that-host");
  await check.click();
  const failed = dialog.locator("[data-testid=preflight][data-ok=false] tr.check-failed");
  await failed.first().waitFor(T);
  const failedText = await failed.first().textContent();
  if (!failedText.includes("destination.token")) throw new Error(`failed check: ${failedText}`);
  console.log(`wrong token, Check: ${failedText}`);
  await shot("wrong-token-checked");
  await migrate.click();
  const err = dialog.locator(".field-error[data-field='destination.token']");
  await err.waitFor(T);
  const next = await err.evaluate((e) => e.closest("label")?.querySelector("input")?.getAttribute("name"));
  if (next !== "migrate-token") throw new Error(`the token's error shows next to ${next}`);
  console.log(`wrong token, Migrate: ${await err.textContent()}`);
  if (await dialog.locator("[data-testid=migration-progress]").count()) throw new Error("a refused migration shows progress");
  await shot("wrong-token-refused");
  const there = await destVms();
  if (there.length) throw new Error(`the destination lists ${there} after a refusal`);
  await page.waitForSelector(".badge.running", T);

  // The right token: every check passes.
  await page.fill("input[name=migrate-token]", TOKEN);
  await page.fill("input[name=migrate-downtime]", "300");
  await check.click();
  const report = dialog.locator("[data-testid=preflight][data-ok=true]");
  await report.waitFor(T);
  const rows = await report.locator("tr[data-check]").count();
  if (rows < 3 || await report.locator("tr.check-failed").count()) throw new Error(`checks: ${await report.textContent()}`);
  console.log(`Check: ${rows} checks passed`);
  await shot("checks-passed");

  // A migration capped at 1 MiB/s (the form takes MiB/s; the 32 MiB disk's mirror takes
  // half a minute at that rate) is cancelled while it copies: the VM runs here as before
  // and the destination keeps nothing.
  await page.fill("input[name=migrate-bandwidth]", "1");
  await migrate.click();
  const progress = dialog.locator("[data-testid=migration-progress]");
  await progress.and(page.locator("[data-phase=mirroring], [data-phase=memory]")).waitFor(T);
  await shot("slow-migration");
  await progress.locator("button:has-text('Cancel')").click();
  await progress.and(page.locator("[data-state=cancelled]")).waitFor({ timeout: 60000 });
  await progress.locator("text=the VM runs here as before").waitFor(T);
  if (await progress.locator("button:has-text('Cancel')").count()) throw new Error("Cancel offered after the end");
  await page.waitForSelector("h2 .badge.running", T);
  await shot("cancelled");
  for (let i = 0; (await destVms()).length; i++) {
    if (i > 50) throw new Error(`the destination keeps ${await destVms()} after a cancel`);
    await page.waitForTimeout(200);
  }
  // The real one at 40 MiB/s: its ~100 MiB of memory take long enough for several
  // progress events (at most two a second) however fast this machine is.
  await page.fill("input[name=migrate-bandwidth]", "40");

  // Every state the progress shows, as it shows it (progress comes at most twice a second,
  // a state may last less than a screenshot takes).
  await page.evaluate(() => {
    window.__seen = [];
    const note = () => {
      const el = document.querySelector("[data-testid=migration-progress]");
      const badge = document.querySelector("h2 .badge")?.textContent;
      if (!el) return;
      const s = { phase: el.dataset.phase, state: el.dataset.state, ram: el.querySelector("[data-testid=migration-ram]")?.textContent,
        cancel: !!Array.from(el.querySelectorAll("button")).find((x) => x.textContent === "Cancel"), badge };
      const last = window.__seen[window.__seen.length - 1];
      if (JSON.stringify(last) !== JSON.stringify(s)) window.__seen.push(s);
    };
    new MutationObserver(note).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
  });
  await migrate.click();
  await page.waitForSelector("[data-testid=migration-progress]", T);
  await shot("migrating");
  const moved = page.locator("[data-testid=moved]");
  await moved.waitFor({ timeout: 180000 });
  await shot("moved");
  const seen = await page.evaluate(() => window.__seen);
  console.log("progress seen:", JSON.stringify(seen));
  const live = seen.filter((s) => s.state === "running" && s.phase !== "starting");
  if (!live.length) throw new Error("no phase shown while it ran");
  if (!live.some((s) => s.phase === "memory" && /sent/.test(s.ram ?? ""))) throw new Error("no memory figures shown");
  if (!live.some((s) => s.cancel)) throw new Error("no Cancel while the migration could be cancelled");
  if (!seen.some((s) => s.badge === "migrating")) throw new Error("the badge never said migrating");
  const host = await moved.locator("[data-testid=destination-host]").textContent();
  if (host !== DEST_HOST) throw new Error(`moved to ${host}, want ${DEST_HOST}`);
  const downtime = await moved.locator("[data-testid=downtime]").textContent();
  if (!/^\d+ ms$/.test(downtime)) throw new Error(`downtime shown: ${downtime}`);
  console.log(`moved: ${await moved.textContent()}`);

  // The page stays quiet: no more requests for the VM that is no longer here.
  let polls = 0;
  page.on("request", (r) => { if (r.url().endsWith(`/api/v1/vms/${VM}`)) polls += 1; });
  await page.waitForTimeout(4000);
  if (polls) throw new Error(`the moved VM's page asked for it ${polls} times`);

  // A reload finds the VM gone and says where it went (its last operation).
  await page.reload();
  await moved.waitFor(T);
  if ((await moved.locator("[data-testid=destination-host]").textContent()) !== DEST_HOST) throw new Error("after a reload");
  await shot("moved-after-reload");
  const listed = page.waitForResponse((r) => r.url().endsWith("/api/v1/vms") && r.ok(), T);
  await moved.locator("a:has-text('Back to the VM list')").click();
  await page.waitForURL(/\/vms$/, T);
  await listed;
  await page.waitForSelector("h2:has-text('Virtual machines')", T);
  if (await page.locator(`a[href='/vms/${VM}']`).count()) throw new Error("the VM list still shows the VM");
  await shot("vm-list");
  const after = await destVms();
  if (!after.includes(VM)) throw new Error(`the destination lists ${after}`);
  await b.close();
});
