// The web console's journey: log in, create a VM from the test guest in the wizard,
// watch its serial and graphical consoles, snapshot and revert it, stop and delete it.
import { browser, login, run, URL } from "./lib.mjs";

const GUEST = process.env.CORRAL_TEST_GUEST;
const CMDLINE = process.env.CORRAL_GUEST_CMDLINE ?? "console=ttyS0 quiet no_timer_check";

run(async () => {
  const { b, page, shot } = await browser("journey");
  await login(page);
  await shot("logged-in");

  await page.goto(URL + "/vms/new");
  await page.fill("input[name=name]", "web1");
  await page.fill("input[name=memory_mib]", "128");
  await page.fill("input[name=kernel]", `${GUEST}/vmlinuz`);
  await page.fill("input[name=initrd]", `${GUEST}/initrd.img`);
  await page.fill("input[name=cmdline]", CMDLINE);
  await page.fill("input[name=disk_size]", "16");
  await shot("wizard-filled");
  await page.click("button[type=submit]");
  await page.waitForURL(/\/vms\/web1$/, { timeout: 60000 });
  await page.waitForSelector(".badge.running", { timeout: 60000 });

  // The serial console is xterm.js fed by the console websocket; read its buffer.
  await page.waitForSelector("[data-testid=serial] .xterm", { timeout: 15000 });
  await page.waitForFunction(() => {
    const t = document.querySelector("[data-testid=serial]")?.corralTerm;
    if (!t) return false;
    const buf = t.buffer.active;
    let text = "";
    for (let i = 0; i < buf.length; i++) text += buf.getLine(i)?.translateToString(true) + "\n";
    return text.includes("CORRAL-GUEST-READY");
  }, null, { timeout: 180000, polling: 500 });
  await shot("serial-console-ready");

  // The graphical console: noVNC over the daemon's websocket draws the VGA screen.
  await page.waitForSelector("[data-testid=vnc-state]:has-text('connected')", { timeout: 30000 });
  await page.waitForFunction(() => {
    const c = document.querySelector("[data-testid=vnc] canvas");
    if (!c || !c.width || !c.height) return false;
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let lit = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] | px[i + 1] | px[i + 2]) lit++;
    return lit > 100;
  }, null, { timeout: 60000, polling: 500 });
  await shot("graphical-console-drawn");

  await page.fill("input[name=snapshot]", "snap1");
  await page.click("button:has-text('Take snapshot')");
  await page.waitForTimeout(1000);
  await shot("snapshot-requested");
  await page.waitForSelector("[data-testid=snapshots] td:has-text('snap1')", { timeout: 120000 });
  await shot("snapshot-taken");
  await page.click("button:has-text('stop')");
  await page.waitForSelector(".badge.stopped", { timeout: 120000 });
  await shot("stopped");
  await page.click("[data-testid=snapshots] button:has-text('Revert')");
  await page.waitForFunction(() => {
    const op = document.querySelector("[data-testid=operation]")?.textContent ?? "";
    // Done when an error shows or no operation is left running.
    return !!document.querySelector("[data-testid=snapshots-card] .error") || (op.includes("succeeded") || !/running|pending|queued/.test(op));
  }, null, { timeout: 120000, polling: 500 });
  await page.waitForSelector(".badge", { timeout: 10000 });
  const errs = await page.$$eval("[data-testid=snapshots-card] .error", (e) => e.map((x) => x.textContent));
  if (errs.length) throw new Error(`revert failed: ${errs.join("; ")}`);
  await shot("snapshot-reverted");

  // The dashboard's events come only from the live stream (it never polls them):
  // the delete made in the other tab must show up there.
  const dash = await b.newPage();
  await dash.goto(URL + "/");
  await dash.waitForSelector("[data-testid=host-cpu]", { timeout: 15000 });
  await page.bringToFront();
  await page.click("button:has-text('delete')");
  await dash.waitForSelector("[data-testid=events] tr:has-text('web1'):has-text('deleted')", { timeout: 30000 });
  await dash.close();
  await page.waitForURL(/\/vms$/, { timeout: 60000 });
  await page.waitForTimeout(500);
  if (await page.$("a:has-text('web1')")) throw new Error("web1 still listed after delete");
  await shot("deleted");
  await b.close();
});
