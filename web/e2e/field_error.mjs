// A server-side validation error (400 with `field`) shows next to the matching input.
import { browser, login, run, URL } from "./lib.mjs";

run(async () => {
  const { b, page, shot } = await browser("field_error");
  await login(page);
  await page.goto(URL + "/vms/new");
  await page.fill("input[name=name]", "bad name!");
  await page.fill("input[name=kernel]", "/nonexistent/vmlinuz");
  await page.click("button[type=submit]");
  const el = await page.waitForSelector(".field-error", { timeout: 30000 });
  const field = await el.getAttribute("data-field");
  // The message sits in the same label as the input the field names.
  const inputName = await el.evaluate((e) => e.closest("label")?.querySelector("input,textarea,select")?.getAttribute("name"));
  const top = field.split(/[.[]/)[0];
  console.log(`field ${field} shown next to input ${inputName}: ${await el.textContent()}`);
  if (inputName !== top && !(top === "kernel" && ["kernel", "initrd", "cmdline"].includes(inputName))) {
    throw new Error(`error for ${field} shown next to ${inputName}`);
  }
  await shot("field-error");
  await b.close();
});
