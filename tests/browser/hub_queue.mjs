// The fair queue of hub mode in Debian's chromium, against a REAL JupyterHub and broker (no route
// interception): the user logs in to the hub, opens JupyterLab on their single-user server, starts
// "New vGPU notebook…" while the course's only vGPU is held by someone else, and
//   1. sees the place in the launch notification ("Waiting for a vGPU: 1st in line") and the status
//      bar ("vGPU queue: 1st"); GET orion/api/queue from inside the page (its cookies and XSRF token)
//      lists the waiting launch at position 1. Then one line {"waiting": {...}} goes to stdout: the
//      test (Python) stops the other user's kernel;
//   2. once the broker hands the vGPU over, the notebook opens on the started kernel (idle), which
//      is this user's vGPU kernel (the notebook's session, GET orion/api/allocations; a cell run in
//      the notebook prints ORION_JUPYTER_USER).
// Prints one JSON result line last. Usage: node hub_queue.mjs HUB_URL USER PASSWORD SPEC SCREENSHOT_DIR
import { chromium } from 'playwright-core';
import { kernelIdle } from './lab.mjs';

const [hubUrl, user, password, spec, shots] = process.argv.slice(2);
const prefix = `/user/${encodeURIComponent(user)}/`;
const started = Date.now();
const elapsed = () => Math.round((Date.now() - started) / 100) / 10;
const result = { ok: false, step: 'start', errors: [], failed_requests: [], times: {} };
const mark = (name) => { result.times[name] = elapsed(); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.setDefaultTimeout(30000);
page.on('pageerror', (error) => result.errors.push(String(error)));
// Refusals of the extension's API (a missing XSRF token through the proxy would be a 403 here). A 404
// of events is expected while the server has not yet taken the launch's kernel id.
page.on('response', (response) => {
  const url = new URL(response.url());
  if (response.status() >= 400 && url.pathname.startsWith(prefix)) {
    result.failed_requests.push({ method: response.request().method(), path: url.pathname, status: response.status() });
  }
});

// The single-user server's REST API from inside the page: the hub's cookie, and the XSRF token
// JupyterLab itself sends (the _xsrf cookie as X-XSRFToken).
const api = (path, init = {}) => page.evaluate(async ({ url, init }) => {
  const xsrf = document.cookie.split('; ').find((c) => c.startsWith('_xsrf='))?.slice('_xsrf='.length);
  const headers = { ...(xsrf ? { 'X-XSRFToken': decodeURIComponent(xsrf) } : {}), ...(init.headers || {}) };
  const response = await fetch(url, { ...init, headers, credentials: 'same-origin' });
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: response.status, body };
}, { url: prefix + path, init });

const toast = (text) => page.locator('.Toastify__toast', { hasText: text });
const queueStatus = page.locator('.orion-QueueStatus');

async function openLaunchDialog() {
  // The command palette loses its input when the lab moves the focus (its first layout, a tab
  // opening): try again then.
  for (let attempt = 1; ; attempt++) {
    try {
      await page.keyboard.press('Control+Shift+C');
      await page.locator('.lm-CommandPalette-input').fill('New vGPU notebook', { timeout: 5000 });
      await page.locator('.lm-CommandPalette-item', { hasText: 'New vGPU notebook…' }).first().click({ timeout: 5000 });
      await page.locator('.orion-LaunchDialog').waitFor({ timeout: 10000 });
      return attempt;
    } catch (error) {
      if (attempt === 4) throw error;
      await page.keyboard.press('Escape');
      await page.locator('#jp-main-dock-panel').click({ position: { x: 5, y: 5 }, timeout: 5000 }).catch(() => {});
    }
  }
}

try {
  // Log in to the hub (its own form, with its XSRF field), then JupyterLab on the user's server
  // (the hub's OAuth handshake with the single-user server on the way).
  result.step = 'login';
  await page.goto(`${hubUrl}/hub/login?next=${encodeURIComponent(`${prefix}lab`)}`);
  await page.locator('#username_input').fill(user);
  await page.locator('#password_input').fill(password);
  await Promise.all([page.waitForURL((url) => url.pathname.startsWith(`${prefix}lab`), { timeout: 60000 }),
                     page.locator('#login_submit').click()]);
  mark('logged_in');
  result.lab_url = new URL(page.url()).pathname;
  result.step = 'lab';
  await page.locator('#jp-main-statusbar').waitFor({ timeout: 60000 });
  await page.locator('.jp-LauncherCard').first().waitFor({ timeout: 60000 });
  mark('lab_loaded');
  result.queue_before = (await api('orion/api/queue')).body;

  // "New vGPU notebook…" with the spec; the launch waits in the broker's queue.
  result.step = 'dialog';
  result.palette_attempts = await openLaunchDialog();
  await page.locator(`.orion-LaunchDialog input[value="${spec}"]`).check();
  const posted = page.waitForRequest((r) => r.method() === 'POST'
    && new URL(r.url()).pathname === `${prefix}orion/api/kernels`);
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();
  await page.locator('.orion-LaunchDialog').waitFor({ state: 'detached' });
  result.request = (await posted).postDataJSON();
  const kernelId = result.request.kernel_id;
  mark('launched');

  result.step = 'queued';
  const waitingToast = toast('Waiting for a vGPU');
  await waitingToast.waitFor({ timeout: 45000 });
  result.toast = await waitingToast.innerText();
  result.toast_buttons = await waitingToast.locator('button').allInnerTexts();
  await page.waitForFunction(() => document.querySelector('.orion-QueueStatus')?.textContent.includes('vGPU queue:'),
    null, { timeout: 45000 });
  result.queue_status = await queueStatus.innerText();
  result.queue_status_title = await queueStatus.getAttribute('title');
  const queue = await api('orion/api/queue');
  result.queue_status_code = queue.status;
  result.queue = queue.body;
  mark('queued_seen');
  await page.waitForTimeout(300);  // the toast slides in
  await page.screenshot({ path: `${shots}/hub-queue-waiting.png` });
  // Python stops the kernel that holds the vGPU now.
  console.log(JSON.stringify({ waiting: { kernel_id: kernelId, position: queue.body?.waiting?.[0]?.position ?? null } }));

  // The broker hands the vGPU over: the launch passes, the notebook opens on the started kernel.
  result.step = 'opened';
  const tab = page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current', { hasText: /^Untitled/ });
  await tab.waitFor({ timeout: 90000 });
  mark('notebook_tab');
  result.tab = await tab.innerText();
  // The notebook's session on a connected, idle kernel: the status bar's kernel item ("… | Idle";
  // the toolbar's execution indicator says "idle" before any kernel connects, so it proves nothing).
  result.kernel_item = await kernelIdle(page, /^Untitled\d*\.ipynb$/);
  result.kernel_status = await page.locator('.jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator')
    .getAttribute('data-status');
  mark('kernel_idle');
  // A cell runs on it, over the page's websocket through the hub's proxy: the kernel is this user's.
  const notebook = page.locator('.jp-NotebookPanel:visible');
  await notebook.locator('.jp-Cell .cm-content').first().click();
  await page.keyboard.insertText("import os; print(os.environ.get('ORION_JUPYTER_USER'))");
  await page.keyboard.press('Shift+Enter');
  const output = notebook.locator('.jp-OutputArea-output').first();
  await output.waitFor({ timeout: 60000 });
  result.cell_output = (await output.innerText()).trim();
  await kernelIdle(page, /^Untitled\d*\.ipynb$/, 30000);
  mark('cell_ran');
  result.kernel_id = kernelId;
  result.sessions = (await api('api/sessions')).body.map((s) => ({ path: s.path, kernel: s.kernel?.id }));
  result.allocations = (await api('orion/api/allocations')).body.kernels
    .map((k) => ({ kernel_id: k.kernel_id, kernel_spec: k.kernel_spec, user: k.user, vgpus: k.vgpus,
                   backend: k.backend, pod: k.pod, phase: k.phase, path: k.path }));
  await page.waitForFunction(() => !document.querySelector('.orion-QueueStatus')?.textContent, null,
    { timeout: 30000 });
  result.queue_status_hidden = !(await queueStatus.isVisible());
  result.queue_after = (await api('orion/api/queue')).body;
  await page.screenshot({ path: `${shots}/hub-queue-opened.png` });
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/hub-queue-failure.png` }).catch(() => {});
} finally {
  mark('done');
  await browser.close();
}
console.log(JSON.stringify(result));
