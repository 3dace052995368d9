// Five wrong passwords: the login form counts down the server's Retry-After, with the
// button disabled meanwhile.
import { browser, run, URL, USER } from "./lib.mjs";

run(async () => {
  const { b, page, shot } = await browser("throttle");
  await page.goto(URL + "/");
  await page.fill("input[name=username]", USER);
  for (let i = 0; i < 6; i++) {
    await page.fill("input[name=password]", `wrong ${i}`);
    if (await page.isDisabled("button[type=submit]")) break;
    await page.click("button[type=submit]");
    await page.waitForSelector("[role=alert]", { timeout: 15000 });
  }
  const el = await page.waitForSelector("[data-testid=throttled]", { timeout: 15000 });
  const first = Number((await el.textContent()).match(/in (\d+) s/)[1]);
  if (!(first > 0)) throw new Error(`no countdown: ${await el.textContent()}`);
  if (!(await page.isDisabled("button[type=submit]"))) throw new Error("submit stays enabled while throttled");
  await page.waitForFunction((n) => {
    const m = document.querySelector("[data-testid=throttled]")?.textContent?.match(/in (\d+) s/);
    return m && Number(m[1]) < n;
  }, first, { timeout: 5000 });
  await shot("throttled-countdown");
  await b.close();
});
