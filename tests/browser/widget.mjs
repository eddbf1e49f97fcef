// Opens a notebook in JupyterLab, or in Notebook 7 (UI "notebook"), in Debian's chromium (no browser
// download), runs its cells and reports what the vGPU widget rendered, and its chart while the
// second cell runs. Usage: node widget.mjs BASE_URL TOKEN NOTEBOOK SCREENSHOT [lab|notebook]
import { chromium } from 'playwright-core';
import { kernelIdle } from './lab.mjs';

const [base, token, notebook, screenshot, ui = 'lab'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const result = { ok: false };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(90000);
  await page.goto(`${base}/${ui === 'lab' ? 'lab/tree' : 'notebooks'}/${notebook}?token=${token}`);
  await page.waitForSelector('.jp-NotebookPanel .jp-Cell');
  // Wait until the notebook's kernel is connected and idle (the toolbar's execution indicator starts
  // as "idle" before any kernel connects, so it proves nothing): in JupyterLab the status bar's kernel
  // item for it ("Change kernel for widget.ipynb") reads "<kernel display name> | Idle"; Notebook 7
  // has no status bar, so its session context (window.jupyterapp) is asked. The cell's output below
  // proves that the kernel runs code.
  if (ui === 'lab') {
    const name = notebook.split('/').pop().replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    result.kernel_item = await kernelIdle(page, new RegExp(`(^|/)${name}$`));
  } else {
    await page.waitForFunction(() => {
      const context = window.jupyterapp?.shell.currentWidget?.sessionContext;
      return context?.session?.kernel?.connectionStatus === 'connected' && context.kernelDisplayStatus === 'idle';
    }, null, { polling: 100 });
  }
  // Run the cell; on a loaded machine the first key press can land before the editor is live.
  const widget = page.locator('.jp-OutputArea-output .widget-vbox').first();
  for (let attempt = 1; ; attempt++) {
    await page.click('.jp-Cell .jp-InputArea-editor');
    await page.keyboard.press('Shift+Enter');
    try {
      await widget.waitFor({ state: 'visible', timeout: 30000 });
      break;
    } catch (error) {
      const ran = await page.locator('.jp-Cell .jp-InputPrompt').first().innerText();
      if (attempt === 3 || /\d/.test(ran)) throw error;  // it ran (a number in [n]:) yet showed no widget
    }
  }
  await page.waitForFunction(() => document.querySelector('.jp-OutputArea-output')?.innerText.includes('memory cap'));
  result.text = await widget.innerText();
  result.buttons = await widget.locator('button').allInnerTexts();
  result.progress_bars = await widget.locator('.widget-hprogress, .widget-progress').count();
  await page.screenshot({ path: screenshot, fullPage: true });
  // The second cell runs for a while, taking memory step by step: the chart (its thread's comm
  // messages) moves meanwhile, the cell still running ("[*]").
  const points = () => widget.locator('.orion-chart polyline').getAttribute('points');
  const second = page.locator('.jp-Cell').nth(1);
  await second.locator('.jp-InputArea-editor').click();
  await page.keyboard.press('Shift+Enter');
  await page.waitForFunction(() => document.querySelectorAll('.jp-Cell .jp-InputPrompt')[1]?.textContent.includes('*'));
  await page.waitForTimeout(3000);
  result.chart_during = [await points()];
  await page.waitForTimeout(4000);
  result.chart_during.push(await points());
  result.running_after = (await second.locator('.jp-InputPrompt').innerText()).includes('*');
  result.chart_caption = await widget.locator('.orion-chart').innerText();
  result.load_text = await widget.locator('.widget-label').allInnerTexts();
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-running.png'), fullPage: true });
  result.ok = true;
} catch (error) {
  result.error = String(error);
  const pages = browser.contexts().flatMap((c) => c.pages());
  if (pages.length) await pages[0].screenshot({ path: screenshot, fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
