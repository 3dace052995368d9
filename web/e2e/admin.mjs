// Admin pages: a user and a token made in the UI (the token shown once, never again),
// and the audit log listing both changes with their actor.
import { browser, login, run, URL, USER } from "./lib.mjs";

run(async () => {
  const { b, page, shot } = await browser("admin");
  await login(page);
  await page.goto(URL + "/users");
  await page.fill("input[placeholder=username]", "ops1");
  await page.fill("input[placeholder=password]", "ops1 password here");
  await page.locator("select").first().selectOption("operator");
  await page.click("button:has-text('Add user')");
  await page.waitForSelector("td:has-text('ops1')", { timeout: 15000 });
  await page.fill("input[placeholder='token name']", "ci-token");
  await page.click("button:has-text('Create token')");
  const token = (await (await page.waitForSelector("[data-testid=new-token] code", { timeout: 15000 })).textContent()).trim();
  if (!/^corral_[0-9a-f]+_/.test(token)) throw new Error(`not a token: ${token}`);
  await page.waitForSelector("td:has-text('ci-token')");
  await shot("user-and-token-made");
  // Shown once: after a reload the list has the token, the page not its secret.
  await page.reload();
  await page.waitForSelector("td:has-text('ci-token')", { timeout: 15000 });
  if ((await page.content()).includes(token)) throw new Error("the token's secret is shown again");
  await page.goto(URL + "/audit");
  await page.waitForSelector("td:has-text('POST /api/v1/users')", { timeout: 15000 });
  await page.waitForSelector("td:has-text('POST /api/v1/tokens')");
  const actor = await page.locator("tr:has(td:has-text('POST /api/v1/tokens')) td").nth(1).textContent();
  if (!actor.includes(USER)) throw new Error(`audit actor ${actor}, not ${USER}`);
  await shot("audit-log");
  await b.close();
});
