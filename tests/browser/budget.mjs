// vGPU-hour budgets in JupyterLab (Debian's chromium), against the real server (local backend, a
// direct-mode budget of 1 vGPU-hour a week, 0.9 of it used and the 80 % warning given before the
// server started, as its budget file says):
//   1. The status bar reads "0.1 of 1 vGPU-hours left this week · resets Tue 09:00", in the warning
//      colour, the warning on hover; the vGPU sidebar shows the same line.
//   2. The class section (this user is an instructor) lists the user's use and what is left with
//      Top up; Top up 2 hours: the row and the status bar follow (2.1 of 3).
//   3. Top up -1: the server's sentence in the error dialog, nothing changed.
// Prints one JSON line. Usage: node budget.mjs BASE_URL TOKEN SCREENSHOT_DIR USER
import { launchChromium } from './lab.mjs';

const [base, token, shots, user] = process.argv.slice(2);
const browser = await launchChromium();
const result = { ok: false, step: 'start', errors: [] };
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.setDefaultTimeout(30000);
page.on('pageerror', (error) => result.errors.push(String(error)));

const status = page.locator('.orion-BudgetStatus');
const panel = page.locator('#orion-vgpu-panel');
const row = panel.locator(`.orion-Budget[data-user="${user}"]`);
const textOf = async (locator) => (await locator.innerText()).trim();

async function topUp(hours) {
  await row.locator('button', { hasText: 'Top up' }).click();
  const dialog = page.locator('.jp-Dialog');
  await dialog.locator('input').fill(String(hours));
  result[`topup_${hours}_dialog`] = await textOf(dialog.locator('.jp-Dialog-header'));
  await dialog.locator('.jp-Dialog-button', { hasText: 'Top up' }).click();
}

try {
  await page.goto(`${base}/lab?token=${token}&reset`);
  await page.locator('#jp-main-statusbar').waitFor();

  // 1. The status bar's line, then the sidebar's.
  result.step = 'status bar';
  await page.waitForFunction(() => /vGPU-hours left this week/.test(
    document.querySelector('.orion-BudgetStatus')?.textContent ?? ''));
  result.status_text = await textOf(status);
  result.status_title = await status.getAttribute('title');
  result.status_warning = await status.evaluate((n) => n.classList.contains('orion-mod-warning'));
  result.status_color = await status.evaluate((n) => getComputedStyle(n).color);
  result.plain_color = await page.locator('#jp-main-statusbar').evaluate((n) => getComputedStyle(n).color);
  result.step = 'sidebar';
  await page.locator('.jp-SideBar .lm-TabBar-tab[data-id="orion-vgpu-panel"]').click();
  await panel.locator('.orion-Panel-budget').waitFor();
  result.panel_text = await textOf(panel.locator('.orion-Panel-budget'));

  // 2. The class section's row, and Top up.
  result.step = 'class row';
  await row.waitFor();
  result.row_before = await textOf(row);
  await page.screenshot({ path: `${shots}/budget.png` });
  result.step = 'top up';
  await topUp(2);
  await page.waitForFunction((user) => /2\.1 left/.test(
    document.querySelector(`.orion-Budget[data-user="${user}"]`)?.textContent ?? ''), user);
  result.row_after = await textOf(row);
  await page.waitForFunction(() => /^2\.1 of 3 /.test(
    document.querySelector('.orion-BudgetStatus')?.textContent ?? ''), null, { timeout: 60000 });
  result.status_after = await textOf(status);
  result.status_warning_after = await status.evaluate((n) => n.classList.contains('orion-mod-warning'));
  result.panel_after = await textOf(panel.locator('.orion-Panel-budget'));

  // 3. A refused top-up: the server's sentence.
  result.step = 'refused top up';
  await topUp(-1);
  const error = page.locator('.jp-Dialog', { hasText: 'Could not top up the budget' });
  await error.waitFor();
  result.refusal = await textOf(error.locator('.jp-Dialog-body'));
  await page.screenshot({ path: `${shots}/budget-refused.png` });
  await error.locator('.jp-Dialog-button', { hasText: 'Close' }).click();
  result.budget_after_refusal = await page.evaluate(async (token) => (await fetch('/orion/api/budget', {
    headers: { Authorization: `token ${token}` } })).json(), token);
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/budget-failed.png` }).catch(() => {});
} finally {
  console.log(JSON.stringify(result));
  await browser.close();
}
