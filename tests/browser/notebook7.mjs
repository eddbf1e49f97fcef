// The orion-jupyter extension in Notebook 7 (`jupyter notebook`), in Debian's chromium: its plugins
// activate on the tree and notebook pages (no status bar there), File > New offers "vGPU Notebook…",
// the vGPU sidebar shows the notebook's kernel, and "New vGPU notebook…" opens the new notebook (in
// a new tab, as Notebook 7 does) on the kernel it started, the toolbar naming that kernel's grant;
// then a full pool: the dialog's reason, the New menu's refused vGPU item, Stop's question.
// Every browser console error is collected; those that come from the extension (its files, its
// plugins, its REST API) are told apart.
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

// Notebook 7 has no status bar. Its kernel status in the top bar (.jp-NotebookKernelStatus) says
// "Kernel Initializing", "Kernel Connecting", "Kernel Unknown", … (with a -info, -warn or -error
// class) until the kernel connects, then nothing, only faded, for busy and idle alike (and nothing,
// unfaded, before its first change); the toolbar's execution indicator starts as "idle" before any
// kernel connects. Neither says "idle" for a connected kernel, so: the kernel status shows a
// connected kernel, a cell runs on it and its output is read, and then the kernel is idle (the
// notebook's session context, window.jupyterapp's, whose status the kernel status shows).
const kernelConnected = (pg) => pg.waitForFunction(() => {
  const node = document.querySelector('.jp-NotebookKernelStatus');
  const has = (c) => node.classList.contains(`jp-NotebookKernelStatus-${c}`);
  return node !== null && has('fade') && !has('info') && !has('warn') && !has('error') && node.textContent === '';
}, null, { timeout: 60000, polling: 100 });
const kernelIdle = async (pg) => (await pg.waitForFunction(() => {
  const status = window.jupyterapp?.shell.currentWidget?.sessionContext?.kernelDisplayStatus;
  return status === 'idle' && status;
}, null, { timeout: 60000, polling: 100 })).jsonValue();

// Runs the notebook's first cell (typing `source` into it first when it holds something else) and
// returns its output's text; on a loaded machine the first key press can land before the editor is live.
async function runFirstCell(pg, source) {
  const cell = pg.locator('.jp-Notebook .jp-Cell').first();
  const output = cell.locator('.jp-OutputArea-output').first();
  for (let attempt = 1; ; attempt++) {
    const editor = cell.locator('.cm-content');
    await editor.click();
    if ((await editor.innerText()).trim() !== source) {
      await pg.keyboard.press('Control+A');
      await pg.keyboard.insertText(source);
    }
    await pg.keyboard.press('Shift+Enter');
    try {
      await output.waitFor({ timeout: 30000 });
      return (await output.innerText()).trim();
    } catch (error) {
      const ran = await cell.locator('.jp-InputPrompt').innerText();
      if (attempt === 3 || /\d/.test(ran)) throw error;  // it ran (a number in [n]:) yet showed no output
    }
  }
}

// The notebook on `pg` on a connected kernel that runs "1 + 1" and is idle after.
async function kernelRuns(pg, what) {
  await kernelConnected(pg);
  result[`${what}_cell_output`] = await runFirstCell(pg, '1 + 1');
  if (result[`${what}_cell_output`] !== '2') throw new Error(`${what}: 1 + 1 gave ${result[`${what}_cell_output`]}`);
  await kernelConnected(pg);
  result[`${what}_kernel_status`] = await kernelIdle(pg);
}

// Jupyter's REST API from inside `pg` (the token authenticates it; a GET needs no XSRF cookie).
const api = (pg, path, init = {}) => pg.evaluate(async ({ path, init, token }) =>
  (await fetch(path, { ...init, headers: { Authorization: `token ${token}` } })).json(), { path, init, token });

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
  // The tree's own "New" dropdown: the vGPU items after the kernels; the vGPU panel from it.
  result.step = 'tree new menu';
  await page.locator('.jp-DropdownMenu .lm-MenuBar-itemLabel', { hasText: 'New' }).click();
  await page.locator('.lm-Menu:visible .lm-Menu-itemLabel', { hasText: 'New vGPU notebook…' }).waitFor();
  result.tree_new_items = await page.locator('.lm-Menu:visible .lm-Menu-itemLabel').allInnerTexts();
  await page.screenshot({ path: `${shots}/nb7-new-menu.png` });
  await page.locator('.lm-Menu:visible .lm-Menu-itemLabel', { hasText: 'Show the vGPU panel' }).click();
  const treePanel = page.locator('#orion-vgpu-panel');
  await treePanel.locator('.orion-Bar-text').first().waitFor();
  result.tree_panel_pool = await treePanel.locator('.orion-Panel-pool').innerText();
  await page.screenshot({ path: `${shots}/nb7-tree-panel.png` });

  result.step = 'notebook';
  await page.goto(`${base}/notebooks/${notebookPath}?token=${token}`);
  await kernelRuns(page, 'notebook');
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
  await page.locator('.orion-LaunchDialog input[name="memory"]').fill('3Gi');  // more than the spec's 2 GiB
  const opened = context.waitForEvent('page', { timeout: 60000 });
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();
  const tab = await opened;
  await kernelRuns(tab, 'new_tab');
  result.new_tab = new URL(tab.url()).pathname;
  const kernelName = tab.locator('.jp-KernelName').first();
  // (named by its grant once the page has the kernel's allocation from the server)
  await tab.waitForFunction((node) => /3\sGiB/.test(node.textContent), await kernelName.elementHandle());
  result.new_tab_kernel_name = await kernelName.innerText();
  await tab.screenshot({ path: `${shots}/nb7-new.png` });
  result.sessions = await page.evaluate(async () =>
    (await (await fetch('/api/sessions')).json()).map((s) => ({ path: s.path, kernel: s.kernel.id, name: s.kernel.name })));
  result.kernels = await page.evaluate(async () => (await (await fetch('/api/kernels')).json()).length);

  // A full pool (the two notebooks' kernels and two more, started over the REST API): the dialog
  // says why and its Start is disabled; the tree's New menu's vGPU kernel item says why it cannot
  // start, and makes no notebook and opens no tab; the sidebar's Stop asks first.
  result.step = 'full pool';
  for (let i = 0; i < 2; i++) {
    result[`fill_${i}`] = (await api(page, '/orion/api/kernels', {
      method: 'POST', body: JSON.stringify({ spec: 'orion-1x2gi' }) })).id ?? 'not started';
  }
  await page.evaluate(() => { void window.jupyterapp.commands.execute('orion-jupyter:new-vgpu-notebook'); });
  const dialog = page.locator('.orion-LaunchDialog');
  await dialog.locator('.orion-LaunchForm-blocked').waitFor();
  result.blocked_text = await dialog.locator('.orion-LaunchForm-blocked').innerText();
  const start = dialog.locator('.jp-Dialog-footer .jp-mod-accept');
  result.start_disabled = await start.isDisabled();
  await page.screenshot({ path: `${shots}/nb7-full-pool-dialog.png` });
  await dialog.locator('.jp-Dialog-button', { hasText: 'Cancel' }).click();
  await dialog.waitFor({ state: 'detached' });

  result.step = 'refused new menu item';
  const tree = await context.newPage();
  await tree.goto(`${base}/tree?token=${token}`);
  await tree.locator('.jp-DirListing').first().waitFor();
  const untitled = async () => (await api(tree, '/api/contents')).content.map((c) => c.name)
    .filter((n) => /^Untitled/.test(n)).sort();
  result.untitled_before = await untitled();
  const pages = context.pages().length;
  await tree.locator('.jp-DropdownMenu .lm-MenuBar-itemLabel', { hasText: 'New' }).click();
  await tree.locator('.lm-Menu:visible .lm-Menu-itemLabel', { hasText: 'Python 3 · 1 vGPU · 2 GiB' }).click();
  const refusal = tree.locator('.jp-Dialog', { hasText: 'Could not start' });
  await refusal.waitFor();
  result.refusal_title = await refusal.locator('.jp-Dialog-header').innerText();
  result.refusal = await refusal.locator('.jp-Dialog-body').evaluate((node) => ({
    text: node.innerText, fits: node.scrollWidth <= node.clientWidth + 1,
  }));
  await tree.screenshot({ path: `${shots}/nb7-refused.png` });
  await refusal.locator('.jp-Dialog-button', { hasText: 'Close' }).click();
  await refusal.waitFor({ state: 'detached' });
  await tree.waitForTimeout(1000);  // (a tab or a notebook that came late)
  result.tabs_opened = context.pages().length - pages;
  result.untitled_after = await untitled();

  result.step = 'stop asks';
  await page.evaluate(() => window.jupyterapp.commands.execute('orion-jupyter:show-vgpu-panel'));
  const stop = panel.locator('.orion-Panel-mine .orion-Kernel', { hasText: 'no notebook' }).first()
    .locator('button', { hasText: 'Stop' });
  await stop.click();
  const question = page.locator('.jp-Dialog', { hasText: 'Stop vGPU kernel' });
  await question.waitFor();
  result.stop_question = await question.locator('.jp-Dialog-body').innerText();
  await page.screenshot({ path: `${shots}/nb7-stop.png` });
  await question.locator('.jp-Dialog-button', { hasText: 'Cancel' }).click();
  await question.waitFor({ state: 'detached' });
  result.kernels_after_cancel = await page.evaluate(async () => (await (await fetch('/api/kernels')).json()).length);
  await page.waitForTimeout(1000); // late console errors
  result.ok = true;
} catch (error) {
  result.error = String(error);
  for (const [i, pg] of context.pages().entries()) {
    await pg.screenshot({ path: `${shots}/nb7-failure-${i}.png` }).catch(() => {});
  }
} finally {
  await browser.close();
}
// The extension's own: from its files (…/@orion-jupyter/labextension/…), its plugins, its API (but
// the browser's line for the full pool's refusal, a 409 the page shows).
const refused = (e) => /status of 409/.test(e.text) && /\/orion\/api\/kernels\b/.test(e.where);
result.refusals_logged = result.errors.filter(refused).length;
result.extension_errors = result.errors.filter((e) => /orion/i.test(`${e.text} ${e.where}`) && !refused(e));
console.log(JSON.stringify(result));
