// NICs and disks on the VM page: add a user NIC (passt) to a stopped VM (a bad MAC first: the
// server's error shows next to the MAC input), see it listed with its MAC, remove it.
// (The test's daemon runs in the host's namespace without networks of its own: no
// bridge may appear on the host.)
import { browser, login, run, URL } from "./lib.mjs";

const VM = process.env.CORRAL_VM ?? "nicvm";

run(async () => {
  const { b, page, shot } = await browser("nics");
  await login(page);
  await page.goto(URL + `/vms/${VM}`);
  const card = page.locator("[data-testid=nics-card]");
  await card.waitFor({ timeout: 15000 });
  const before = await card.locator("tr[data-mac]").count();
  await page.selectOption("select[name=nic-kind]", "user");
  await page.fill("input[name=nic-mac]", "01:00:00:00:00:01");
  await page.click("[data-testid=nic-add] button[type=submit]");
  const err = await page.waitForSelector("[data-testid=nic-add] .field-error", { timeout: 15000 });
  if ((await err.getAttribute("data-field")) !== "nic.mac") throw new Error(`error on ${await err.getAttribute("data-field")}`);
  await shot("bad-mac-named");
  await page.fill("input[name=nic-mac]", "");
  await page.click("[data-testid=nic-add] button[type=submit]");
  await page.waitForFunction((n) => document.querySelectorAll("[data-testid=nics] tr[data-mac]").length === n + 1, before,
    { timeout: 15000 });
  const row = card.locator("tr[data-mac]").last();
  const mac = await row.getAttribute("data-mac");
  const text = await row.textContent();
  if (!text.includes("user") || !text.includes(mac)) throw new Error(`new NIC row: ${text}`);
  console.log(`added ${mac}: ${text}`);
  await shot("nic-added");
  await row.locator("button:has-text('Remove')").click();
  await page.waitForSelector(`[data-testid=nics] tr[data-mac="${mac}"]`, { state: "detached", timeout: 15000 });
  await shot("nic-removed");
  // Disks on the same page: attach the free volume the test made, then detach it.
  await page.waitForSelector("select[name=attach-volume] option[value=webvol]", { state: "attached", timeout: 15000 });
  await page.click("button:has-text('Attach volume')");
  const disk = page.locator("[data-testid=disks] tr:has-text('webvol')");
  await disk.waitFor({ timeout: 15000 });
  await shot("volume-attached");
  await disk.locator("button:has-text('Detach')").click();
  await disk.waitFor({ state: "detached", timeout: 15000 });
  await b.close();
});
