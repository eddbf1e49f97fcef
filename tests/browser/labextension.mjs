// Drives the orion-jupyter JupyterLab extension in Debian's chromium (no browser download): the vGPU
// sidebar, "New vGPU notebook…" (launcher card, command palette), the status bar item (with memory
// used, from a mocked allocations answer), Stop, a refused launch, a launch in the file browser's
// folder and the launcher's "MNIST on vGPU" card. Prints one JSON line with what it saw.
// Usage: node labextension.mjs BASE_URL TOKEN SCREENSHOT_DIR
import { chromium } from 'playwright-core';

import { kernelIdle as sharedKernelIdle } from './lab.mjs';

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

const kernelIdle = (path, timeout) => sharedKernelIdle(page, path, timeout);

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
  result.demo_cards = await page.locator('.jp-LauncherCard', { hasText: /on vGPU$/ }).allInnerTexts();

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
  result.slider_max = await page.locator('.orion-LaunchDialog input[type="range"]').getAttribute('max');
  // "4G" is decimal, as the server reads it: 4·10⁹ bytes.
  await page.locator('.orion-LaunchDialog input[name="memory"]').fill('4G');
  result.memory_hint_4g = await page.locator('.orion-LaunchForm-hint').innerText();
  await page.locator('.orion-LaunchDialog input[name="memory"]').fill('3Gi');
  await page.screenshot({ path: `${shots}/dialog.png` });
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();

  result.step = 'notebook';
  await page.locator('.orion-LaunchDialog').waitFor({ state: 'detached' });
  const notebook = page.locator('.jp-NotebookPanel:visible');
  result.kernel_item = await kernelIdle(/^Untitled\d*\.ipynb$/);
  const status = page.locator('.orion-StatusItem');
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('GiB'));
  result.status_text = await status.innerText();
  result.status_tooltip = await status.getAttribute('title');
  // The toolbar names the notebook's kernel once its session is connected, by its grant (3 GiB, not
  // the spec's 2 GiB) once the page has the kernel's allocation.
  const kernelName = notebook.locator('.jp-KernelName').first();
  await page.waitForFunction((node) => /3\sGiB/.test(node.textContent), await kernelName.elementHandle());
  result.kernel_name = await kernelName.innerText();
  result.sessions = await api('/api/sessions');

  result.step = 'panel kernel';
  const card = panel.locator('.orion-Panel-mine .orion-Kernel');
  await card.filter({ hasText: '3 GiB' }).first().waitFor();  // the panel refreshes every 5 s
  result.kernel_card = await card.first().innerText();
  result.kernel_card_id = await card.first().getAttribute('data-kernel-id');
  await page.screenshot({ path: `${shots}/notebook.png` });

  // Memory used: a server that measures it says so in allocations (mocked here, so the numbers are
  // known); the status bar and the card show it at the next poll.
  result.step = 'memory used';
  const used = 1288490189; // 1.2 GiB
  const allocations = '**/orion/api/allocations*';
  await page.route(allocations, async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    for (const k of body.kernels) {
      Object.assign(k, { memory_used: used, memory_source: 'torch', memory_sampled_at: new Date().toISOString() });
      if (typeof k.memory_granted === 'number') k.waste_bytes = Math.max(k.memory_granted - used, 0);
    }
    await route.fulfill({ response, json: body });
  });
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes(' used'));
  result.status_text_used = await status.innerText();
  result.status_tooltip_used = await status.getAttribute('title');
  const usage = panel.locator('.orion-Panel-mine .orion-Usage');
  await usage.filter({ hasText: '1.2 GiB' }).first().waitFor();
  result.kernel_usage = await usage.first().innerText();
  await page.screenshot({ path: `${shots}/memory-used.png` });
  await page.unroute(allocations);

  // The instructor's class (mocked: this server's owner is no instructor), by waste: granted minus
  // used, most first, then the longest idle; those whose use is not known last.
  result.step = 'class by waste';
  const GiB = 1024 ** 3;
  const pupil = (user, vgpus, memory_mib, memory_used, idle_seconds) => ({
    pod: `jupyter-${user}-k`, namespace: 'class', user, kernel_id: `k-${user}`, node: 'gpu-1', phase: 'Running',
    reason: '', vgpus, memory_mib, idle_seconds, memory_used, memory_sampled_at: new Date().toISOString(),
    course: 'ai101' });
  const parked = [{ user: 'ada', snapshots: 2, bytes: 4096, last: null, last_snapshot: 's2' },
    { user: 'eve', snapshots: 0, bytes: 0 }];
  const classRoute = (url) => url.pathname.endsWith('/orion/api/class');
  await page.route(classRoute, (route) => route.fulfill({ json: { instructor: true, kernels: [
    pupil('ada', 1, 4096, 3.5 * GiB, 30), pupil('bob', 2, 8192, 0.5 * GiB, 60),
    pupil('cy', 1, 4096, null, 9000), pupil('di', 1, 4096, 3.5 * GiB, 600)], parked } }));
  const order = panel.locator('select[name="orion-class-order"]');
  await order.waitFor();
  result.class_by_user = await panel.locator('.orion-Panel-class .orion-Kernel-name').allInnerTexts();
  await order.selectOption('waste');
  result.class_by_waste = await panel.locator('.orion-Panel-class .orion-Kernel-name').allInnerTexts();
  result.class_first_card = await panel.locator('.orion-Panel-class .orion-Kernel').first().innerText();
  await page.screenshot({ path: `${shots}/class.png` });
  // Exempt / Un-exempt (the instructor's; mocked like the class): POST kernels/{id}/exempt.
  result.exempt_requests = [];
  const exemptRoute = (url) => /\/orion\/api\/kernels\/[^/]+\/exempt$/.test(url.pathname);
  await page.route(exemptRoute, (route) => {
    const kernel_id = decodeURIComponent(new URL(route.request().url()).pathname.split('/').at(-2));
    const { exempt } = route.request().postDataJSON();
    result.exempt_requests.push({ kernel_id, exempt });
    return route.fulfill({ json: { kernel_id, cull_at: null, cull_warning: false, keeps_left: null, exempt } });
  });
  const bob = panel.locator('.orion-Panel-class .orion-Kernel[data-kernel-id="k-bob"]');
  result.class_exempt_buttons = await panel.locator('.orion-Panel-class .orion-ExemptButton').allInnerTexts();
  await bob.locator('.orion-ExemptButton', { hasText: /^Exempt$/ }).click();
  await bob.locator('.orion-ExemptButton', { hasText: 'Un-exempt' }).waitFor();
  result.bob_after_exempt = await bob.locator('.orion-ExemptButton').innerText();
  await bob.locator('.orion-ExemptButton').click();
  await bob.locator('.orion-ExemptButton', { hasText: /^Exempt$/ }).waitFor();
  await page.unroute(exemptRoute);
  // Park beside Stop (asks first; the server's sentence on refusal), Park all of the course, the counts.
  result.step = 'class park';
  result.class_park_buttons = await panel.locator('.orion-Panel-class .orion-Kernel button', { hasText: /^Park$/ })
    .count();
  result.class_course_parks = await panel.locator('.orion-Panel-classParks button').allInnerTexts();
  result.class_parked_counts = await panel.locator('.orion-ParkedCount').allInnerTexts();
  result.park_requests = [];
  const parkRoute = (url) => /\/orion\/api\/class\/kernels\/[^/]+\/park$/.test(url.pathname);
  await page.route(parkRoute, (route) => {
    result.park_requests.push(decodeURIComponent(new URL(route.request().url()).pathname.split('/').at(-2)));
    return route.fulfill({ status: 409, json: { message: 'kernel k-bob is running a cell; park it once it is idle',
                                                reason: 'busy' } });
  });
  await bob.locator('button', { hasText: /^Park$/ }).click();
  const parkQuestion = page.locator('.jp-Dialog', { hasText: 'Park kernel' });
  result.park_question = await parkQuestion.locator('.jp-Dialog-body').innerText();
  await parkQuestion.locator('.jp-Dialog-button.jp-mod-accept', { hasText: 'Park' }).click();
  const parkRefusal = page.locator('.jp-Dialog', { hasText: 'Could not park the kernel' });
  result.park_refusal = await parkRefusal.locator('.jp-Dialog-body').innerText();
  await parkRefusal.locator('.jp-Dialog-button').first().click();
  await parkRefusal.waitFor({ state: 'detached' });
  await page.unroute(parkRoute);
  await page.unroute(classRoute);

  result.step = 'stop';
  await card.first().locator('button', { hasText: 'Stop' }).click();
  // Stop asks first: Cancel keeps the kernel, the dialog's Stop stops it.
  const confirm = page.locator('.jp-Dialog', { hasText: 'Stop vGPU kernel' });
  result.stop_question = await confirm.locator('.jp-Dialog-body').innerText();
  await confirm.locator('.jp-Dialog-button', { hasText: 'Cancel' }).click();
  await confirm.waitFor({ state: 'detached' });
  result.kernels_after_cancel = (await api('/api/kernels')).length;
  await card.first().locator('button', { hasText: 'Stop' }).click();
  await confirm.locator('.jp-Dialog-button.jp-mod-accept', { hasText: 'Stop' }).click();
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
  await page.locator('.orion-LaunchDialog').waitFor({ state: 'detached' });

  // The new notebook goes to the file browser's folder, and the kernel starts there.
  result.step = 'folder';
  await page.locator('.jp-SideBar .lm-TabBar-tab[data-id="filebrowser"]').click();
  await page.locator('.jp-DirListing-item', { hasText: 'labs' }).dblclick();
  await page.locator('.jp-BreadCrumbs', { hasText: 'labs' }).waitFor();
  const posted = page.waitForRequest((r) => new URL(r.url()).pathname.endsWith('/orion/api/kernels') && r.method() === 'POST');
  await openLaunchDialog('palette');
  await page.locator('.orion-LaunchDialog .jp-Dialog-button.jp-mod-accept').click();
  result.folder_request = (await posted).postDataJSON();
  result.folder_kernel_item = await kernelIdle(/^labs\/Untitled\d*\.ipynb$/);
  result.folder_sessions = (await api('/api/sessions')).map((s) => ({ path: s.path, kernel: s.kernel.id }));

  // The launcher's "MNIST on vGPU": the server places the notebook and starts its kernel; the
  // notebook opens on that kernel (no second kernel).
  result.step = 'demo';
  await page.locator('.jp-FileBrowser .jp-ToolbarButtonComponent[data-command="launcher:create"]').click();
  const demoAnswer = page.waitForResponse((r) => r.url().includes('/orion/api/demos/mnist') && r.request().method() === 'POST');
  await page.locator('.jp-LauncherCard:visible', { hasText: 'MNIST on vGPU' }).click();
  const demoResponse = await demoAnswer;
  result.demo_status = demoResponse.status();
  result.demo = await demoResponse.json();
  await page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current', { hasText: 'mnist.ipynb' }).waitFor();
  const demoNotebook = page.locator('.jp-NotebookPanel:visible');
  result.demo_kernel_item = await kernelIdle(/^orion-demos\/mnist\.ipynb$/);
  const demoKernelName = demoNotebook.locator('.jp-KernelName').first();
  await page.waitForFunction((node) => !node.textContent.includes('No Kernel'), await demoKernelName.elementHandle());
  result.demo_kernel_name = await demoKernelName.innerText();
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('2 GiB'));
  result.demo_status_text = await status.innerText();
  result.demo_sessions = (await api('/api/sessions')).map((s) => ({ path: s.path, kernel: s.kernel.id, name: s.kernel.name }));
  result.demo_kernels = (await api('/api/kernels')).map((k) => k.id);
  await page.screenshot({ path: `${shots}/demo.png` });
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/failure.png` }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
