// Helpers the JupyterLab browser scripts share.

// The current notebook of `page`, its path matching `path` (a RegExp; the tab's caption names the
// path), on a connected, idle kernel: the status bar's kernel item for it ("Change kernel for <its
// tab's label>") reads "<kernel display name> | Idle". The toolbar's execution indicator starts as
// "idle" before any kernel connects (while this item still says "| Unknown"), so it proves nothing.
// Returns the item's text.
export const kernelIdle = async (page, path, timeout = 60000) => (await page.waitForFunction((path) => {
  const tab = document.querySelector('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current');
  const at = /^Path: (.*)$/m.exec(tab?.getAttribute('title') ?? '')?.[1];
  if (at === undefined || !new RegExp(path).test(at)) return false;
  const title = `Change kernel for ${tab.querySelector('.lm-TabBar-tabLabel')?.textContent}`;
  const item = [...document.querySelectorAll('#jp-main-statusbar [title]')].find((n) => n.title === title);
  const text = item?.textContent.trim() ?? '';
  return /\| Idle$/.test(text) && text;
}, path.source, { timeout, polling: 100 })).jsonValue();

// Debian's chromium (no browser download), headless, quiet: what every browser script starts.
export const launchChromium = async () => {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
};
