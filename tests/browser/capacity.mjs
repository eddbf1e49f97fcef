// Classroom capacity in Debian's chromium: the fair queue (its answers stood in for by route
// interception: GET queue, the queued launch's events, DELETE queue/{id} and the pending POST
// kernels) and idle culling against the real server (short cull times; the status bar's
// "idle: parks at HH:MM · Keep" (the local backend parks), its Keep, then "no keeps left").
//   1. A launch waiting from before the page loaded: the status bar says "vGPU queue: 1st"; once it
//      left the queue and its kernel runs, a notification offers its notebook, which opens on it.
//   2. "New vGPU notebook…" while queued: the notification says "2nd in line", then "1st", the
//      status bar "vGPU queue: 2nd", "1st"; then the real launch passes and the notebook opens.
//   3. That kernel, idle: "idle: parks at HH:MM · Keep" in the status bar and its sidebar row; Keep
//      moves cull_at (read from allocations inside the page); the next warning says no keeps are left.
//   4. A queued launch cancelled from its notification: DELETE, then the POST's 409 "cancelled"
//      ends it without an error dialog.
// Prints one JSON line. Usage: node capacity.mjs BASE_URL TOKEN SCREENSHOT_DIR QUEUED_NOTEBOOK
import { randomUUID } from 'node:crypto';

import { chromium } from 'playwright-core';

import { kernelIdle as sharedKernelIdle } from './lab.mjs';

const [base, token, shots, queuedNotebook] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const result = { ok: false, step: 'start', deleted: [], errors: [] };
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.setDefaultTimeout(30000);
page.on('pageerror', (error) => result.errors.push(String(error)));

// Jupyter's REST API from inside the page; POSTs with the token (no XSRF cookie dance).
const api = (path, init = {}) => page.evaluate(async ({ path, init, token }) => {
  const response = await fetch(path, { ...init, headers: { Authorization: `token ${token}` } });
  return { status: response.status, body: await response.json() };
}, { path, init, token });

const kernelIdle = (path, timeout) => sharedKernelIdle(page, path, timeout);

// What the queue's server side answers, as this test says.
const queue = { waiting: [], eventsFor: null, events: [], hold: false, held: null };
const row = (kernel_id, position, estimate_seconds, path = null) => ({
  kernel_id, position, ahead: position - 1, estimate_seconds, since: Date.now() / 1000 - 20, course: 'ai101',
  vgpus: 1, memory: '2Gi', kernel_spec_name: 'orion-1x2gi', path });
const queued = (seq, position, estimate_seconds) => ({
  seq, time: Date.now() / 1000, stage: 'queue', level: 'info',
  message: `waiting for a vGPU: position ${position} in course ai101`,
  queued: { position, ahead: position - 1, estimate_seconds } });

await page.route((url) => /\/orion\/api\/queue(\/|$)/.test(url.pathname), async (route) => {
  const request = route.request();
  if (request.method() === 'DELETE') {
    const kernelId = decodeURIComponent(new URL(request.url()).pathname.split('/').pop());
    result.deleted.push(kernelId);
    queue.waiting = queue.waiting.filter((w) => w.kernel_id !== kernelId);
    await route.fulfill({ json: { cancelled: kernelId } });
    const held = queue.held;
    if (held && held.body.kernel_id === kernelId) {
      queue.held = null;
      queue.eventsFor = null;
      await held.route.fulfill({ status: 409, json: {
        reason: 'cancelled', message: `the launch of kernel "${kernelId}" was cancelled while waiting for a vGPU` } });
    }
    return;
  }
  await route.fulfill({ json: { waiting: queue.waiting } });
});
await page.route((url) => url.pathname.endsWith('/orion/api/events'), async (route) => {
  const url = new URL(route.request().url());
  if (queue.eventsFor && url.searchParams.get('kernel') === queue.eventsFor) {
    const after = Number(url.searchParams.get('after') || 0);
    await route.fulfill({ json: { kernel: queue.eventsFor, events: queue.events.filter((e) => e.seq > after) } });
  } else {
    await route.fallback();
  }
});
await page.route((url) => url.pathname.endsWith('/orion/api/kernels'), async (route) => {
  if (queue.hold && route.request().method() === 'POST') {
    queue.hold = false;
    queue.held = { route, body: route.request().postDataJSON() };  // pending: it waits in the queue
  } else {
    await route.fallback();
  }
});

const status = page.locator('.orion-StatusItem');
const queueStatus = page.locator('.orion-QueueStatus');
const toast = (text) => page.locator('.Toastify__toast', { hasText: text });
const textOf = (selector, wanted) => page.waitForFunction(
  ({ selector, wanted }) => document.querySelector(selector)?.textContent.includes(wanted), { selector, wanted });
const until = async (check, what, ms = 30000) => {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await page.waitForTimeout(50);
  }
};

async function startFromDialog() {
  // The command palette closes when a notebook that just opened takes the focus: try again then.
  for (let attempt = 1; ; attempt++) {
    try {
      await page.keyboard.press('Control+Shift+C');
      await page.locator('.lm-CommandPalette-input').fill('New vGPU notebook', { timeout: 5000 });
      await page.locator('.lm-CommandPalette-item', { hasText: 'New vGPU notebook…' }).first().click({ timeout: 5000 });
      await page.locator('.orion-LaunchDialog').waitFor({ timeout: 5000 });
      break;
    } catch (error) {
      if (attempt === 3) throw error;
      await page.keyboard.press('Escape');
    }
  }
  await page.locator('.orion-LaunchDialog input[value="orion-1x2gi"]').check();
  queue.hold = true;
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();
  await page.locator('.orion-LaunchDialog').waitFor({ state: 'detached' });
  await until(() => queue.held, 'the POST of kernels');
  return queue.held.body.kernel_id;
}

try {
  // 1. A launch of this user waits in the queue when the page loads (a reload).
  result.step = 'reload';
  const early = randomUUID();
  queue.waiting = [row(early, 1, 30, queuedNotebook)];
  await page.goto(`${base}/lab?token=${token}&reset`);
  await page.locator('#jp-main-statusbar').waitFor();
  await textOf('.orion-QueueStatus', 'vGPU queue:');
  result.reload_queue_status = await queueStatus.innerText();
  await queueStatus.click();
  const list = page.locator('.orion-QueueList');
  await list.locator('.orion-Queued').waitFor();
  result.reload_queue_dialog = await list.innerText();
  await page.screenshot({ path: `${shots}/queue-dialog.png` });
  await page.locator('.jp-Dialog .jp-Dialog-button.jp-mod-accept').click();
  // It leaves the queue and its kernel starts (CPU only: never stopped for idling in this test).
  const started = await api('/orion/api/kernels', { method: 'POST', body: JSON.stringify(
    { spec: 'orion-1x2gi', vgpus: 0, kernel_id: early, path: '' }) });
  result.reload_started_status = started.status;
  queue.waiting = [];
  const offer = toast('left the queue');
  await offer.waitFor();
  result.reload_offer = await offer.innerText();
  result.reload_offer_actions = await offer.locator('button').allInnerTexts();
  await page.waitForTimeout(300);  // the toast slides in
  await page.screenshot({ path: `${shots}/queue-reload.png` });
  await offer.locator('button', { hasText: 'Open notebook' }).click();
  await page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current', { hasText: queuedNotebook }).waitFor();
  result.reload_kernel_item = await kernelIdle(new RegExp(`^${queuedNotebook.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
  result.reload_sessions = (await api('/api/sessions')).body.map((s) => ({ path: s.path, kernel: s.kernel.id }));
  result.reload_kernel = early;
  result.queue_status_hidden_after_reload = !(await queueStatus.isVisible());

  // 2. "New vGPU notebook…" waits in the queue: 2nd, then 1st, then the real launch passes.
  result.step = 'queued launch';
  const queuedId = await startFromDialog();
  result.queued_request = queue.held.body;
  queue.eventsFor = queuedId;
  queue.events = [queued(1, 2, 45)];
  queue.waiting = [row(queuedId, 2, 45, queue.held.body.path)];
  await toast('2nd in line').waitFor();
  result.toast_2nd = await toast('2nd in line').innerText();
  result.toast_2nd_buttons = await toast('2nd in line').locator('button').allInnerTexts();
  await textOf('.orion-QueueStatus', '2nd');
  result.queue_status_2nd = await queueStatus.innerText();
  await page.screenshot({ path: `${shots}/queue-2nd.png` });
  queue.events.push(queued(2, 1, 10));
  queue.waiting = [row(queuedId, 1, 10, queue.held.body.path)];
  await toast('1st in line').waitFor();
  result.toast_1st = await toast('1st in line').innerText();
  await textOf('.orion-QueueStatus', '1st');
  result.queue_status_1st = await queueStatus.innerText();
  // It leaves the queue: the server's own events from now on, and the real launch.
  queue.waiting = [];
  queue.eventsFor = null;
  const { route } = queue.held;
  queue.held = null;
  await route.continue();
  await page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current', { hasText: /^Untitled/ }).waitFor();
  result.queued_kernel_item = await kernelIdle(/^Untitled\d*\.ipynb$/);
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('GiB'));
  result.queued_status_text = await status.innerText();
  result.queued_sessions = (await api('/api/sessions')).body.map((s) => ({ path: s.path, kernel: s.kernel.id }));
  result.queued_kernel = queuedId;
  await page.waitForFunction(() => !document.querySelector('.orion-QueueStatus')?.textContent);
  result.queue_status_hidden = !(await queueStatus.isVisible());

  // 3. The kernel idles: the server warns (cull_warning), the page says when it stops; Keep.
  result.step = 'idle warning';
  await page.locator('.jp-SideBar .lm-TabBar-tab[data-id="orion-vgpu-panel"]').click();
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('idle: parks at'),
    null, { timeout: 45000 });
  result.warning_text = await status.innerText();
  result.warning_title = await status.getAttribute('title');
  const mine = (await api('/orion/api/allocations')).body.kernels.find((k) => k.kernel_id === queuedId);
  result.before_keep = mine;
  const cardWarning = page.locator(`#orion-vgpu-panel .orion-Kernel[data-kernel-id="${queuedId}"] .orion-Cull`);
  await cardWarning.waitFor();
  result.panel_warning = await cardWarning.innerText();
  await page.screenshot({ path: `${shots}/idle-warning.png` });
  const kept = page.waitForResponse((r) => new URL(r.url()).pathname.endsWith(`/orion/api/kernels/${queuedId}/keep`));
  await status.locator('button', { hasText: 'Keep' }).click();
  const keepAnswer = await kept;
  result.keep_status = keepAnswer.status();
  result.keep_answer = await keepAnswer.json();
  await page.waitForFunction(() => !document.querySelector('.orion-StatusItem')?.textContent.includes('idle:'));
  result.status_after_keep = await status.innerText();
  result.after_keep = (await api('/orion/api/allocations')).body.kernels.find((k) => k.kernel_id === queuedId);
  // The one keep is used up: the next warning says so (and offers no Keep).
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('no keeps left'),
    null, { timeout: 45000 });
  result.no_keeps_text = await status.innerText();
  result.no_keeps_buttons = await status.locator('button').count();
  await cardWarning.filter({ hasText: 'no keeps left' }).waitFor();
  result.panel_no_keeps = await cardWarning.innerText();
  await page.screenshot({ path: `${shots}/no-keeps.png` });

  // 4. A queued launch cancelled from its notification: no error, no dialog.
  result.step = 'cancel';
  const kernelsBefore = (await api('/api/kernels')).body.length;
  const cancelledId = await startFromDialog();
  queue.eventsFor = cancelledId;
  queue.events = [queued(1, 3, 120)];
  queue.waiting = [row(cancelledId, 3, 120, queue.held.body.path)];
  const third = toast('3rd in line');
  await third.waitFor();
  result.toast_3rd = await third.innerText();
  await textOf('.orion-QueueStatus', '3rd');
  await third.locator('button', { hasText: 'Cancel' }).click();
  await until(() => result.deleted.includes(cancelledId), 'the DELETE of queue/{id}');
  await third.waitFor({ state: 'detached' });
  await page.waitForFunction(() => !document.querySelector('.orion-QueueStatus')?.textContent);
  await page.waitForTimeout(500);  // an error dialog would be up by now
  result.dialogs_after_cancel = await page.locator('.jp-Dialog').count();
  result.cancelled_kernel = cancelledId;
  result.kernels_after_cancel = (await api('/api/kernels')).body.length - kernelsBefore;
  await page.screenshot({ path: `${shots}/cancelled.png` });
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/capacity-failure.png` }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
