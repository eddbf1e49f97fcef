// The orion-jupyter extension in Notebook 7 (`jupyter notebook`), in Debian's chromium: its plugins
// activate on the tree and notebook pages (no status bar there), File > New offers "vGPU Notebook…",
// the vGPU sidebar shows the notebook's kernel, and "New vGPU notebook…" opens the new notebook (in
// a new tab, as Notebook 7 does) on the kernel it started. Every browser console error is collected;
// those that come from the extension (its files, its plugins, its REST API) are told apart.
// Prints one JSON line. Usage: node notebook7.mjs BASE_URL TOKEN NOTEBOOK_PATH SCREENSHOT_DIR
import { chromium } from 'playwright-core';

const [base, token, notebookPath, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
context.setDefaultTimeout(30000);
const result = { ok: false, step: 'start', errors: [] };
const PLUGINS = ['model', 'panel', 'new-notebook', 'status'].map((p) => `@orion-jupyter/labextension:${p}`);
const COMMANDS = ['orion-jupyter:new-vgpu-notebook', 'orion-jupyter:show-vgpu-panel', 'orion-jupyter:open-demo'];

function watch(page) {
  page.on('console', (message) => {
    if (message.type() === 'error') {
      result.errors.push({ page: page.url(), text: message.text(), where: message.location().url || '' });
    }
  });
  page.on('pageerror', (error) => {
    result.errors.push({ page: page.url(), text: String(error), where: error.stack || '' });
  });
}
context.on('page', watch);

// The extension's plugins and commands, as the page's application (exposed) has them.
const extensionState = (page) => page.evaluate(({ plugins, commands }) => {
  const app = window.jupyterapp;
  return {
    activated: plugins.filter((p) => app.isPluginActivated(p)),
    commands: commands.filter((c) => app.commands.hasCommand(c)),
  };
}, { plugins: PLUGINS, commands: COMMANDS });

const page = await context.newPage();
try {
  result.step = 'tree';
  await page.goto(`${base}/tree?token=${token}`);
  await page.locator('.jp-DirListing').first().waitFor();
  await page.waitForFunction(() => window.jupyterapp?.commands.hasCommand('orion-jupyter:new-vgpu-notebook'));
  result.tree = await extensionState(page);
  await page.locator('.lm-MenuBar-itemLabel', { hasText: 'File' }).click();
  await page.locator('.lm-Menu-itemLabel', { hasText: /^New$/ }).hover();
  const newMenu = page.locator('.lm-Menu:visible .lm-Menu-itemLabel', { hasText: 'vGPU Notebook…' });
  await newMenu.waitFor();
  result.file_new_items = await page.locator('.lm-Menu:visible .lm-Menu-itemLabel').allInnerTexts();
  await page.keyboard.press('Escape');
  await page.keyboard.press('Escape');
  await page.screenshot({ path: `${shots}/nb7-tree.png` });

  result.step = 'notebook';
  await page.goto(`${base}/notebooks/${notebookPath}?token=${token}`);
  await page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').waitFor({ timeout: 60000 });
  await page.waitForFunction(() => window.jupyterapp?.commands.hasCommand('orion-jupyter:show-vgpu-panel'));
  result.notebook = await extensionState(page);
  result.status_items = await page.locator('.orion-StatusItem').count();

  result.step = 'panel';
  await page.evaluate(() => window.jupyterapp.commands.execute('orion-jupyter:show-vgpu-panel'));
  const panel = page.locator('#orion-vgpu-panel');
  await panel.locator('.orion-Panel-mine .orion-Kernel').first().waitFor();
  await panel.locator('.orion-Bar-text').first().waitFor();
  result.panel_mine = await panel.locator('.orion-Panel-mine').innerText();
  result.panel_pool = await panel.locator('.orion-Panel-pool').innerText();
  await page.screenshot({ path: `${shots}/nb7-notebook.png` });

  result.step = 'dialog';
  await page.evaluate(() => { void window.jupyterapp.commands.execute('orion-jupyter:new-vgpu-notebook'); });
  await page.locator('.orion-LaunchDialog').waitFor();
  await page.locator('.orion-LaunchDialog input[value="orion-1x2gi"]').check();
  const opened = context.waitForEvent('page', { timeout: 60000 });
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();
  const tab = await opened;
  await tab.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').waitFor({ timeout: 60000 });
  result.new_tab = new URL(tab.url()).pathname;
  const kernelName = tab.locator('.jp-KernelName').first();
  await tab.waitForFunction((node) => !node.textContent.includes('No Kernel'), await kernelName.elementHandle());
  result.new_tab_kernel_name = await kernelName.innerText();
  await tab.screenshot({ path: `${shots}/nb7-new.png` });
  result.sessions = await page.evaluate(async () =>
    (await (await fetch('/api/sessions')).json()).map((s) => ({ path: s.path, kernel: s.kernel.id, name: s.kernel.name })));
  result.kernels = await page.evaluate(async () => (await (await fetch('/api/kernels')).json()).length);
  await page.waitForTimeout(1000); // late console errors
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/nb7-failure.png` }).catch(() => {});
} finally {
  await browser.close();
}
// The extension's own: from its files (…/@orion-jupyter/labextension/…), its plugins, its API.
result.extension_errors = result.errors.filter((e) => /orion/i.test(`${e.text} ${e.where}`));
console.log(JSON.stringify(result));
