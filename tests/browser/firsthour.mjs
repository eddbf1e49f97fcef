// A newcomer's and a student's first hour in JupyterLab (Debian's chromium): the launcher (each
// vGPU card's own icon, the demos in their section after the kernels), then a full pool (every
// vGPU held by two kernels started here over the REST API): "New vGPU notebook…" says why nothing
// can start and its Start is disabled; a kernel's launcher card shows JupyterLab's "Error Starting
// Kernel" with the server's sentence wrapped, and the empty notebook it created is removed once
// that is read. The kernel tiles' labels as laid out, line by line. Then the 4 GiB spec launched with
// 8 GiB from the dialog: what names that kernel (toolbar, kernel status, ours, the sidebar), also
// after a reload. Prints one JSON line. Usage: node firsthour.mjs BASE_URL TOKEN SCREENSHOT_DIR
import { kernelIdle, launchChromium } from './lab.mjs';

const [base, token, shots] = process.argv.slice(2);
const browser = await launchChromium();
const result = { ok: false, step: 'start', errors: [] };
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
page.setDefaultTimeout(30000);
page.on('pageerror', (error) => result.errors.push(`${error}\n${error.stack}`));

const api = (path, init = {}) => page.evaluate(async ({ path, init, token }) => {
  const response = await fetch(path, { ...init, headers: { Authorization: `token ${token}` } });
  return { status: response.status, body: await response.json().catch(() => null) };
}, { path, init, token });

const started = [];
try {
  await page.goto(`${base}/lab?token=${token}&reset`);
  await page.locator('.jp-LauncherCard', { hasText: 'MNIST on vGPU' }).waitFor();

  result.step = 'launcher';
  result.sections = await page.locator('.jp-Launcher-section').evaluateAll((sections) => sections.map((s) => ({
    title: s.querySelector('.jp-Launcher-sectionTitle')?.textContent.trim(),
    cards: [...s.querySelectorAll('.jp-LauncherCard')].map((c) => ({
      label: c.querySelector('.jp-LauncherCard-label')?.textContent.trim(),
      // Notebook cards show an image (a kernel's logo); other sections the command's own svg icon.
      icon: c.querySelector('.jp-LauncherCard-icon img')?.getAttribute('src')
        ?? c.querySelector('.jp-LauncherCard-icon svg')?.outerHTML ?? '',
    })),
  })));
  // Each kernel tile's label as the browser laid it out: its lines (one Range per character; a line
  // starts where a character stands lower than the one before), and whether the card shows them all.
  result.tile_lines = await page.locator('.jp-LauncherCard').evaluateAll((cards) => cards
    .filter((card) => /\/kernelspecs\/orion-/.test(card.querySelector('img')?.getAttribute('src') ?? ''))
    .map((card) => {
      const p = card.querySelector('.jp-LauncherCard-label p');
      const text = p.firstChild;
      const range = document.createRange();
      const lines = [];
      let last = null;
      for (let i = 0; i < text.length; i++) {
        range.setStart(text, i);
        range.setEnd(text, i + 1);
        const rect = range.getClientRects()[0];
        if (!rect || rect.width === 0) continue;  // a space the line break swallowed
        if (last === null || rect.top > last.top + 1) lines.push('');
        last = rect;
        lines[lines.length - 1] += text.data[i];
      }
      // (the label clips what overflows it, and the card what overflows the card)
      const bottom = Math.min(p.parentElement.getBoundingClientRect().bottom, card.getBoundingClientRect().bottom);
      return { label: text.data, lines, shown_whole: last !== null && last.bottom <= bottom + 0.5 };
    }));
  await page.screenshot({ path: `${shots}/launcher.png` });

  result.step = 'fill the pool';
  for (let i = 0; i < 2; i++) {
    const answer = await api('/orion/api/kernels', { method: 'POST', body: JSON.stringify({ spec: 'orion-2x4gi' }) });
    result[`fill_${i}`] = answer.status;
    if (answer.body?.id) started.push(answer.body.id);
  }
  result.specs_full = (await api('/orion/api/specs')).body.specs.map((s) => [s.name, s.can_start, s.why_not ?? '']);

  result.step = 'full-pool dialog';
  await page.locator('.jp-LauncherCard', { hasText: 'New vGPU notebook' }).click();
  const dialog = page.locator('.orion-LaunchDialog');
  await dialog.locator('.orion-LaunchForm-blocked').waitFor();
  result.blocked_text = await dialog.locator('.orion-LaunchForm-blocked').innerText();
  const start = dialog.locator('.jp-Dialog-footer .jp-mod-accept');
  result.start_disabled = await start.isDisabled();
  result.start_title = await start.getAttribute('title');
  result.spec_details = await dialog.locator('.orion-SpecOption-detail').allInnerTexts();
  await page.screenshot({ path: `${shots}/full-pool-dialog.png` });
  await dialog.locator('.jp-Dialog-button', { hasText: 'Cancel' }).click();
  await dialog.waitFor({ state: 'detached' });

  result.step = 'refused launcher card';
  await page.locator('.jp-LauncherCard', { hasText: 'Python 3 · 1 vGPU · 2 GiB' }).first().click();  // Notebook's
  const error = page.locator('.jp-Dialog', { hasText: 'Error Starting Kernel' });
  await error.waitFor();
  const pre = error.locator('.jp-Dialog-body pre').first();
  result.refusal = await pre.evaluate((node) => ({
    text: node.textContent, whiteSpace: getComputedStyle(node).whiteSpace,
    fits: node.scrollWidth <= node.clientWidth + 1,
  }));
  result.untitled_while_error = (await api('/api/contents')).body.content.map((c) => c.name)
    .filter((n) => /^Untitled/.test(n));
  await page.screenshot({ path: `${shots}/refused-card.png` });
  await error.locator('.jp-Dialog-button.jp-mod-accept').click();
  // The notebook goes once the error is read; the notification centre says why.
  await page.waitForFunction(() => !document.querySelector('.jp-NotebookPanel'));
  await page.waitForTimeout(1000);
  await page.screenshot({ path: `${shots}/removed.png` });
  await page.locator('.jp-Notification-Status').click();
  const removed = page.locator('.jp-Notification-Toast-info, .jp-Notification-List li, .Toastify__toast',
    { hasText: 'was removed' }).first();
  await removed.waitFor();
  result.removed_notice = await removed.innerText();
  result.untitled_after = (await api('/api/contents')).body.content.map((c) => c.name)
    .filter((n) => /^Untitled/.test(n));
  result.notebook_panels_after = await page.locator('.jp-NotebookPanel').count();
  for (const id of started.splice(0)) await api(`/api/kernels/${id}`, { method: 'DELETE' });

  // The 4 GiB spec launched with 8 GiB from the dialog: what names the notebook's kernel (the
  // toolbar, JupyterLab's kernel status, ours, the sidebar's card) says 8 GiB, and nothing 4 GiB.
  result.step = 'grant above the spec';
  await page.locator('.jp-LauncherCard', { hasText: 'New vGPU notebook' }).click();
  const launch = page.locator('.orion-LaunchDialog');
  await launch.locator('input[value="orion-1x4gi"]').check();
  await launch.locator('input[name="memory"]').fill('8Gi');
  await launch.locator('.jp-Dialog-footer .jp-mod-accept').click();
  await launch.waitFor({ state: 'detached' });
  await kernelIdle(page, /^Untitled\d*\.ipynb$/);
  await page.waitForFunction(() => document.querySelector('.orion-StatusItem')?.textContent.includes('GiB'));
  await page.locator('.jp-SideBar .lm-TabBar-tab[data-id="orion-vgpu-panel"]').click();
  await page.locator('#orion-vgpu-panel .orion-Panel-mine .orion-Kernel').waitFor();
  // (the names change once the page has the kernel's allocation from the server)
  await page.waitForFunction(() => [document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-KernelName'),
    ...document.querySelectorAll('#jp-main-statusbar [title^="Change kernel"]')]
    .every((node) => node && /8\sGiB/.test(node.textContent)));
  result.grant_toolbar = await page.locator('.jp-NotebookPanel:visible .jp-KernelName').first().innerText();
  result.grant_kernel_status = await page.locator('#jp-main-statusbar [title^="Change kernel for"]').innerText();
  result.grant_status = await page.locator('.orion-StatusItem').innerText();
  result.grant_card = await page.locator('#orion-vgpu-panel .orion-Panel-mine .orion-Kernel').innerText();
  result.grant_page_text = await page.locator('body').innerText();
  result.grant_sessions = (await api('/api/sessions')).body.map((s) => [s.path, s.kernel.name, s.kernel.id]);
  await page.screenshot({ path: `${shots}/real-grant.png` });
  // The toolbar's kernel name still opens JupyterLab's kernel picker.
  await page.locator('.jp-NotebookPanel:visible .jp-KernelName').first().click();
  const picker = page.locator('.jp-Dialog', { hasText: 'Select Kernel' });
  await picker.waitFor();
  result.grant_picker = await picker.locator('.jp-Dialog-header').innerText();
  await picker.locator('.jp-Dialog-button', { hasText: 'Cancel' }).click();
  await picker.waitFor({ state: 'detached' });
  // After a reload the notebook comes back on its kernel, named by its grant again.
  await page.reload();
  await kernelIdle(page, /^Untitled\d*\.ipynb$/);
  await page.waitForFunction(() => [document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-KernelName'),
    ...document.querySelectorAll('#jp-main-statusbar [title^="Change kernel"]')]
    .every((node) => node && /8\sGiB/.test(node.textContent)));
  result.reload_toolbar = await page.locator('.jp-NotebookPanel:visible .jp-KernelName').first().innerText();
  result.reload_kernel_status = await page.locator('#jp-main-statusbar [title^="Change kernel for"]').innerText();
  result.ok = true;
} catch (error) {
  result.error = String(error);
  await page.screenshot({ path: `${shots}/failure.png` }).catch(() => {});
} finally {
  for (const id of started) await api(`/api/kernels/${id}`, { method: 'DELETE' }).catch(() => {});
  await browser.close();
  console.log(JSON.stringify(result));
}
