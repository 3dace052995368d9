// Storage, networks and the wizard's disk and cloud-init inputs. Volumes: pool usage
// shown, a bad name and a zero size refused next to their inputs, a volume made, attached
// to a VM from a list, refused deletion while in use (the server's 409 shown), detached
// and deleted. The wizard: bad user-data named next to its box, then a VM made with an
// existing volume and user-data. Networks: a bad subnet named, a network made and
// deleted, the default network's deletion refused while the new VM uses it. (The test's
// daemon runs in a network namespace of its own: its bridges never reach the host.)
import { browser, login, run, URL } from "./lib.mjs";

const GUEST = process.env.CORRAL_TEST_GUEST;
const VM = "storvm"; // defined by the test, no NICs
const T = { timeout: 15000 };

/** Waits for the field error `field` and checks it sits in the label of input `input`. */
async function fieldError(page, scope, field, input) {
  const el = await page.waitForSelector(`${scope} .field-error[data-field="${field}"]`, T);
  const owner = await el.evaluate((e) => e.closest("label")?.querySelector("input,textarea,select")?.getAttribute("name"));
  if (owner !== input) throw new Error(`error for ${field} shown next to ${owner}`);
  console.log(`${field} next to ${input}: ${await el.textContent()}`);
}

async function alertWith(page, text) {
  const el = await page.waitForSelector(`[role=alert]:has-text("${text}")`, T);
  console.log(`refused: ${await el.textContent()}`);
}

run(async () => {
  const { b, page, shot } = await browser("storage");
  await login(page);

  // Volumes.
  await page.goto(URL + "/storage");
  const pool = page.locator("tr[data-row=default]");
  await pool.waitFor(T);
  if (!/\d+%/.test(await pool.textContent())) throw new Error(`no usage on the pool: ${await pool.textContent()}`);
  const form = "[data-testid=volume-create]";
  await page.fill("input[name=vol-name]", "Bad Name!");
  await page.click(`${form} button[type=submit]`);
  await fieldError(page, form, "name", "vol-name");
  await shot("bad-volume-name");
  await page.fill("input[name=vol-name]", "webvol2");
  await page.fill("input[name=vol-size]", "0");
  await page.click(`${form} button[type=submit]`);
  await fieldError(page, form, "size_bytes", "vol-size");
  await shot("zero-size");
  await page.fill("input[name=vol-size]", "16");
  await page.selectOption("select[name=vol-format]", "raw");
  await page.click(`${form} button[type=submit]`);
  const row = page.locator("[data-testid=volumes] tr[data-row=webvol2]");
  await row.waitFor(T);
  const text = await row.textContent();
  if (!text.includes("raw") || !text.includes("16.0 MiB")) throw new Error(`new volume row: ${text}`);
  if (await page.locator(`${form} .field-error`).count()) throw new Error("a field error outlived the fix");
  await shot("volume-created");

  await row.locator("button:has-text('Attach…')").click();
  await page.selectOption("select[name=attach-vm]", VM);
  await row.locator("button:text-is('Attach')").click();
  await row.locator(`button:has-text('Detach')`).waitFor(T);
  await shot("volume-attached");
  await row.locator("button:has-text('Delete')").click();
  await alertWith(page, "in use");
  await shot("delete-refused");
  await row.locator("button:has-text('Detach')").click();
  await row.locator("button:has-text('Detach')").waitFor({ state: "detached", ...T });
  await row.locator("button:has-text('Delete')").click();
  await row.waitFor({ state: "detached", ...T });
  await shot("volume-deleted");

  // The wizard: cloud-init user-data and an existing volume.
  await page.goto(URL + "/vms/new");
  await page.fill("input[name=name]", "civm");
  await page.fill("input[name=kernel]", `${GUEST}/vmlinuz`);
  await page.fill("input[name=initrd]", `${GUEST}/initrd.img`);
  await page.waitForSelector("select[name=volume] option[value=civol]", { state: "attached", ...T });
  await page.selectOption("select[name=volume]", "civol");
  await page.fill("textarea[name=user_data]", "hostname: nope");
  await page.click("label.row input[type=checkbox]"); // do not start it
  await page.click("button[type=submit]");
  await fieldError(page, "form", "cloud_init.user_data", "user_data");
  await shot("bad-user-data");
  await page.fill("textarea[name=user_data]", "#cloud-config\nruncmd:\n  - echo hi\n");
  await page.click("button[type=submit]");
  await page.waitForURL(/\/vms\/civm$/, { timeout: 60000 });
  await shot("vm-created");
  // The VM page's NIC form offers the host's networks by name.
  await page.selectOption("select[name=nic-kind]", "network");
  await page.locator("select[name=nic-source] option[value=default]").waitFor({ state: "attached", ...T });

  // Networks.
  await page.goto(URL + "/networks");
  const nets = "[data-testid=networks]";
  await page.locator(`${nets} tr[data-row=default]`).waitFor(T);
  const nform = "[data-testid=network-create]";
  await page.fill("input[name=net-name]", "webnet");
  await page.selectOption("select[name=net-type]", "isolated");
  await page.fill("input[name=net-subnet]", "172.31.213.1/99");
  await page.click(`${nform} button[type=submit]`);
  await fieldError(page, nform, "subnet", "net-subnet");
  await shot("bad-subnet");
  await page.fill("input[name=net-subnet]", "172.31.213.1/24");
  await page.click(`${nform} button[type=submit]`);
  const net = page.locator(`${nets} tr[data-row=webnet]`);
  await net.waitFor(T);
  if (!(await net.textContent()).includes("172.31.213.1/24")) throw new Error(`new network row: ${await net.textContent()}`);
  await shot("network-created");
  await net.locator("button:has-text('Delete')").click();
  await net.waitFor({ state: "detached", ...T });
  await page.locator(`${nets} tr[data-row=default] button:has-text('Delete')`).click();
  await alertWith(page, "in use");
  await shot("network-delete-refused");
  await b.close();
});
