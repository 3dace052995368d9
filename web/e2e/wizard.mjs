// The Create VM wizard picks from what exists: the image select lists the image the test
// made (with its size); NICs are rows of selects. A NIC the server refuses (a host bridge
// with no name) gets its error next to its own row — after a `none` row, which sends no
// NIC, so the request's `networks[1]` is the page's third row. Fixed, the VM is made with
// two user NICs and not started.
import { browser, login, run, URL } from "./lib.mjs";

const GUEST = process.env.CORRAL_TEST_GUEST;
const CMDLINE = process.env.CORRAL_GUEST_CMDLINE ?? "console=ttyS0 quiet no_timer_check";
const IMAGE = process.env.CORRAL_IMAGE ?? "webimg";
const T = { timeout: 15000 };

run(async () => {
  const { b, page, shot } = await browser("wizard");
  await login(page);
  await page.goto(URL + "/vms/new");

  // Image boot: the image is listed by name with its size, and a host path can be typed.
  await page.selectOption("select[name=boot]", "image");
  const opt = page.locator(`select[name=image] option[value=${IMAGE}]`);
  await opt.waitFor({ state: "attached", ...T });
  const label = await opt.textContent();
  if (!label.includes("16.0 MiB")) throw new Error(`image option without its size: ${label}`);
  if ((await page.inputValue("select[name=image]")) !== IMAGE) throw new Error("the first image is not preselected");
  if (await page.locator("input[name=image_path]").count()) throw new Error("path box shown with an image picked");
  await shot("image-listed");
  await page.selectOption("select[name=image]", "");
  await page.locator("input[name=image_path]").waitFor(T);

  // Kernel boot, three NIC rows: user, none, a host bridge with no name.
  await page.selectOption("select[name=boot]", "kernel");
  await page.fill("input[name=name]", "wizvm");
  await page.fill("input[name=memory_mib]", "128");
  await page.fill("input[name=kernel]", `${GUEST}/vmlinuz`);
  await page.fill("input[name=initrd]", `${GUEST}/initrd.img`);
  await page.fill("input[name=cmdline]", CMDLINE);
  const rows = page.locator("[data-testid=nic-row]");
  if ((await rows.count()) !== 1) throw new Error(`${await rows.count()} NIC rows at first`);
  await page.selectOption("select[name=nic-0]", "user");
  await page.click("[data-testid=nic-add-row]");
  await page.selectOption("select[name=nic-1]", "none");
  await page.click("[data-testid=nic-add-row]");
  await page.selectOption("select[name=nic-2]", "bridge");
  await page.locator("input[name=nic-2-bridge]").waitFor(T);
  await page.click("label.row input[type=checkbox]"); // do not start it
  await page.click("button[type=submit]");
  const err = await page.waitForSelector(".field-error", T);
  const field = await err.getAttribute("data-field");
  const row = await err.evaluate((e) => e.closest("[data-testid=nic-row]")?.getAttribute("data-row"));
  console.log(`${field} shown on NIC row ${row}: ${await err.textContent()}`);
  if (!field.startsWith("networks[1]") || row !== "2") throw new Error(`error for ${field} shown on row ${row}`);
  await shot("bridge-refused-on-its-row");

  // Fix it: drop the `none` row, make the bridge a user NIC.
  await rows.nth(1).locator("button:has-text('Remove')").click();
  if ((await rows.count()) !== 2) throw new Error(`${await rows.count()} NIC rows after removing one`);
  await page.selectOption("select[name=nic-1]", "user");
  await shot("fixed");
  await page.click("button[type=submit]");
  await page.waitForURL(/\/vms\/wizvm$/, { timeout: 60000 });
  await page.waitForSelector(".badge.stopped", T);
  await shot("vm-created");
  await b.close();
});
