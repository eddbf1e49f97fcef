// Park and resume in JupyterLab (Debian's chromium), against the real server (local backend):
//   1. A notebook on a vGPU kernel runs `answer = 42`; the status bar's Park saves it and stops
//      the kernel (its vGPU free, the notebook open): the item reads "parked HH:MM · Resume", the
//      sidebar lists the parked notebook with its size and age.
//   2. Resume (status bar): a new kernel with the variables, the notebook's session moved onto it; a
//      notification says what came back; `print(answer)` prints 42.
//   3. Idle culling parks the resumed kernel (short cull times; its warning says "idle: parks at
//      HH:MM"): the notebook shows "parked · Resume" again instead of only "No Kernel"; the
//      sidebar's Resume brings it back, `print(answer * 2)`.
//   4. Park again; the sidebar's Delete asks (Cancel keeps the snapshot), then deletes it.
// Prints one JSON line. Usage: node park.mjs BASE_URL TOKEN SCREENSHOT_DIR NOTEBOOK
import { kernelIdle as sharedKernelIdle, launchChromium } from './lab.mjs';

const [base, token, shots, notebook] = process.argv.slice(2);
const browser = await launchChromium();
const result = { ok: false, step: 'start', errors: [] };
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.setDefaultTimeout(30000);
page.on('pageerror', (error) => result.errors.push(String(error)));

const api = (path, init = {}) => page.evaluate(async ({ path, init, token }) => {
  const response = await fetch(path, { ...init, headers: { Authorization: `token ${token}` } });
  return { status: response.status, body: await response.json().catch(() => null) };
}, { path, init, token });
const kernelIdle = () => sharedKernelIdle(page, new RegExp(`^${notebook.replace('.', '\\.')}$`), 90000);
const sessions = async () => (await api('/api/sessions')).body.map((s) => ({ path: s.path, kernel: s.kernel?.id,
  kernel_name: s.kernel?.name }));
const snapshots = async () => (await api('/orion/api/snapshots')).body.snapshots;

const park = page.locator('.orion-ParkStatus');
const cells = page.locator('.jp-NotebookPanel:visible .jp-Notebook .jp-Cell');

// Runs cell `index` (its source already in the notebook); returns its output's text ('' if none).
async function runCell(index, withOutput) {
  const cell = cells.nth(index);
  const prompt = cell.locator('.jp-InputPrompt');
  const before = (await prompt.innerText()).trim();
  await cell.locator('.cm-content').click();
  await page.keyboard.press('Shift+Enter');
  // "[n]:" with a new number once it ran (a queued cell shows "[*]:")
  await page.waitForFunction(({ el, before }) => {
    const text = el.textContent.trim();
    return /\[\d+\]/.test(text) && text !== before;
  }, { el: await prompt.elementHandle(), before }, { timeout: 60000 });
  if (!withOutput) return '';
  const output = cell.locator('.jp-OutputArea-output').first();
  await output.waitFor();
  return (await output.innerText()).trim();
}

// The newest notification toast's text that matches `pattern`.
async function toast(pattern) {
  const node = page.locator('.Toastify__toast', { hasText: pattern }).last();
  await node.waitFor({ timeout: 90000 });
  return (await node.innerText()).trim();
}

try {
  await page.goto(`${base}/lab/tree/${notebook}?token=${token}&reset`);
  result.step = 'kernel';
  result.kernel_item = await kernelIdle();
  [result.kernel_before] = (await sessions()).map((s) => s.kernel);

  // 1. answer = 42, then Park in the status bar.
  result.step = 'answer = 42';
  await runCell(0, false);
  await kernelIdle();
  result.step = 'park';
  await park.locator('button', { hasText: 'Park' }).waitFor();
  result.park_title = await park.locator('button').getAttribute('title');
  await park.locator('button', { hasText: 'Park' }).click();
  await page.waitForFunction(() => /^parked \d\d:\d\d · Resume$/.test(
    document.querySelector('.orion-ParkStatus')?.innerText.trim() ?? ''));
  result.parked_text = (await park.innerText()).trim();
  result.parked_title = await park.getAttribute('title');
  result.park_toast = await toast('Parked');
  result.kernels_parked = (await api('/api/kernels')).body.map((k) => k.id);
  result.sessions_parked = await sessions();
  result.snapshots_parked = await snapshots();
  await page.locator('.jp-SideBar .lm-TabBar-tab[data-id="orion-vgpu-panel"]').click();
  const card = page.locator('#orion-vgpu-panel .orion-Parked');
  await card.first().waitFor();
  result.panel_parked = (await card.first().innerText()).trim();
  await page.waitForTimeout(1000); // the notification's slide-in ends
  await page.screenshot({ path: `${shots}/park.png` });

  // 2. Resume in the status bar: the notebook on the new kernel, `answer` back.
  result.step = 'resume';
  await park.locator('button', { hasText: 'Resume' }).click();
  result.resume_toast = await toast('Resumed');
  result.kernel_item_resumed = await kernelIdle();
  result.sessions_resumed = await sessions();
  result.step = 'print(answer)';
  result.answer_output = await runCell(1, true);
  result.snapshots_resumed = await snapshots();
  await page.screenshot({ path: `${shots}/resumed.png` });

  // 3. Idle culling parks it: "parked · Resume" again; the sidebar's Resume.
  result.step = 'idle culling parks';
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('idle: parks at'),
    null, { timeout: 60000 });
  result.cull_warning_text = (await page.locator('.orion-StatusItem').innerText()).trim();
  await page.waitForFunction(() => /^parked \d\d:\d\d · Resume$/.test(
    document.querySelector('.orion-ParkStatus')?.innerText.trim() ?? ''), null, { timeout: 120000 });
  result.culled_text = (await park.innerText()).trim();
  result.kernels_culled = (await api('/api/kernels')).body.map((k) => k.id);
  result.snapshots_culled = await snapshots();
  await card.first().waitFor();
  result.panel_culled = (await card.first().innerText()).trim();
  const resumedToasts = () => [...document.querySelectorAll('.Toastify__toast')]
    .filter((t) => t.textContent.includes('Resumed')).length;
  const before = await page.evaluate(resumedToasts);
  // Resume on another kernel: the dialog offers every spec, the parked one first; a bigger slice here.
  await card.first().locator('button', { hasText: 'Resume on…' }).click();
  const choice = page.locator('.jp-Dialog .orion-ResumeOn-spec');
  await choice.waitFor();
  result.resume_on_options = await choice.locator('option').evaluateAll((os) => os.map((o) => o.value));
  result.resume_on_selected = await choice.inputValue();
  await choice.selectOption('orion-1x4gi');
  await page.locator('.jp-Dialog .jp-Dialog-button.jp-mod-accept', { hasText: 'Resume' }).click();
  await page.waitForFunction(`(${resumedToasts})() > ${before}`, null, { timeout: 90000 });
  result.panel_resume_toast = await toast('Resumed');
  result.kernel_item_panel_resumed = await kernelIdle();
  result.sessions_resumed_on = await sessions();
  result.answer_twice_output = await runCell(2, true);

  // 4. Park again; Delete in the sidebar asks, Cancel keeps it, Delete deletes it.
  result.step = 'delete';
  await kernelIdle();
  await park.locator('button', { hasText: 'Park' }).click();
  await card.first().waitFor();
  await card.first().locator('button', { hasText: 'Delete' }).click();
  const dialog = page.locator('.jp-Dialog');
  await dialog.waitFor();
  result.delete_question = (await dialog.locator('.jp-Dialog-body').innerText()).trim();
  await dialog.locator('.jp-Dialog-button', { hasText: 'Cancel' }).click();
  await dialog.waitFor({ state: 'detached' });
  result.snapshots_after_cancel = (await snapshots()).length;
  await card.first().locator('button', { hasText: 'Delete' }).click();
  await dialog.locator('.jp-Dialog-button.jp-mod-warn', { hasText: 'Delete' }).click();
  await page.locator('#orion-vgpu-panel .orion-Panel-parked', { hasText: 'No parked notebooks.' }).waitFor();
  result.snapshots_after_delete = (await snapshots()).length;
  await page.waitForFunction(() => !document.querySelector('.orion-ParkStatus')?.textContent);
  result.park_item_hidden = !(await park.isVisible());
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/failure.png` }).catch(() => {});
} finally {
  await browser.close();
  console.log(JSON.stringify(result));
}
