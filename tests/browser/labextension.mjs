// Drives the orion-jupyter JupyterLab extension in Debian's chromium (no browser download): the vGPU
// sidebar, "New vGPU notebook…" (launcher card, command palette), the status bar item, Stop, and a
// refused launch. Prints one JSON line with what it saw. Usage: node labextension.mjs BASE_URL TOKEN SCREENSHOT_DIR
import { chromium } from 'playwright-core';

const [base, token, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const result = { ok: false, step: 'start' };
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.setDefaultTimeout(30000);

// Jupyter's REST API from inside the page (its login cookie and XSRF token, the extension's user).
const api = (path) => page.evaluate(async (path) => (await fetch(path)).json(), path);

// "New vGPU notebook…" from the launcher's card, or from the command palette.
async function openLaunchDialog(from) {
  if (from === 'launcher') {
    await page.locator('.jp-LauncherCard', { hasText: 'New vGPU notebook' }).click();
  } else {
    await page.keyboard.press('Control+Shift+C');
    await page.locator('.lm-CommandPalette-input').fill('New vGPU notebook');
    await page.locator('.lm-CommandPalette-item', { hasText: 'New vGPU notebook…' }).first().click();
  }
  await page.locator('.orion-LaunchDialog').waitFor();
  await page.locator('.orion-LaunchDialog input[value="orion-1x2gi"]').check();
}

try {
  await page.goto(`${base}/lab?token=${token}&reset`);
  await page.locator('#jp-main-statusbar').waitFor();

  await page.locator('.jp-LauncherCard').first().waitFor();
  result.launcher_items = await page.locator('.jp-LauncherCard', { hasText: 'New vGPU notebook' }).count();

  result.step = 'panel';
  await page.locator('.jp-SideBar .lm-TabBar-tab[data-id="orion-vgpu-panel"]').click();
  const panel = page.locator('#orion-vgpu-panel');
  await panel.locator('.orion-Bar-text').first().waitFor();
  result.pool_text = await panel.locator('.orion-Panel-pool').innerText();
  result.mine_text_before = await panel.locator('.orion-Panel-mine').innerText();
  await page.screenshot({ path: `${shots}/panel.png` });

  result.step = 'dialog';
  await openLaunchDialog('launcher');
  result.specs = await page.locator('.orion-SpecOption').allInnerTexts();
  await page.locator('.orion-LaunchDialog input[name="memory"]').fill('3Gi');
  result.memory_hint = await page.locator('.orion-LaunchForm-hint').innerText();
  await page.screenshot({ path: `${shots}/dialog.png` });
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();

  result.step = 'notebook';
  await page.locator('.orion-LaunchDialog').waitFor({ state: 'detached' });
  const notebook = page.locator('.jp-NotebookPanel:visible');
  await notebook.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').waitFor();
  const status = page.locator('.orion-StatusItem');
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('GiB'));
  result.status_text = await status.innerText();
  result.status_tooltip = await status.getAttribute('title');
  // The toolbar names the notebook's kernel once its session is connected.
  const kernelName = notebook.locator('.jp-KernelName').first();
  await page.waitForFunction((node) => !node.textContent.includes('No Kernel'), await kernelName.elementHandle());
  result.kernel_name = await kernelName.innerText();
  result.sessions = await api('/api/sessions');

  result.step = 'panel kernel';
  const card = panel.locator('.orion-Panel-mine .orion-Kernel');
  await card.filter({ hasText: '3 GiB' }).first().waitFor();  // the panel refreshes every 5 s
  result.kernel_card = await card.first().innerText();
  result.kernel_card_id = await card.first().getAttribute('data-kernel-id');
  await page.screenshot({ path: `${shots}/notebook.png` });

  result.step = 'stop';
  await card.first().locator('button', { hasText: 'Stop' }).click();
  await card.first().waitFor({ state: 'detached' });
  result.mine_text_after_stop = await panel.locator('.orion-Panel-mine').innerText();
  result.kernels_after_stop = await api('/api/kernels');

  result.step = 'refused';
  await page.keyboard.press('Escape');  // whatever the stopped kernel's notebook may have asked
  await openLaunchDialog('palette');
  await page.locator('.orion-LaunchDialog input[name="memory"]').fill('64Gi');
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();
  const error = page.locator('.orion-LaunchForm-error');
  await error.waitFor({ state: 'visible' });
  result.refused_text = await error.innerText();
  result.dialog_open_after_refusal = await page.locator('.orion-LaunchDialog').isVisible();
  await page.screenshot({ path: `${shots}/refused.png` });
  result.kernels_after_refusal = await api('/api/kernels');
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-reject').click();
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/failure.png` }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
