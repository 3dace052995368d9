// A long operation from the VM page: "stop" on a guest that ignores the power button
// waits for it, shows the running operation with a Cancel button; Cancel ends it and the
// VM keeps running.
import { browser, login, run, URL } from "./lib.mjs";

const T = { timeout: 30000 };

run(async () => {
  const { b, page, shot } = await browser("cancel");
  await login(page);
  await page.goto(URL + "/vms/deaf");
  await page.waitForSelector(".badge.running", T);
  await page.click("button:has-text('stop')");
  const op = page.locator("[data-testid=operation]");
  await op.filter({ hasText: /vm\.stop (running|pending|queued)/ }).waitFor(T);
  await shot("stop-running");
  await op.locator("button:has-text('Cancel')").click();
  await op.filter({ hasText: "cancelled" }).waitFor(T);
  if (await op.locator("button:has-text('Cancel')").count()) throw new Error("Cancel still offered after the end");
  await page.waitForSelector(".badge.running", T);
  await shot("stop-cancelled");
  await b.close();
});
