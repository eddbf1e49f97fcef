// Notebook 7's tree page: its file browser's "New" dropdown lists the kernels and a few fixed
// commands, rebuilt when the kernel specs change, with no API for others' items. Its menu is found
// in the toolbar item "new-dropdown" (a MenuBar), and "New vGPU notebook…", the demos and "Show the
// vGPU panel" are added after its items, again after each rebuild. Its items for vGPU specs are
// replaced by ours, which start the kernel before making the notebook (so a full pool is said, and
// leaves no empty notebook). JupyterLab's file browser has no such item: nothing happens there.
import { JupyterFrontEnd } from '@jupyterlab/application';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { Menu, MenuBar, Widget } from '@lumino/widgets';

const ITEM = 'new-dropdown';
const TRIES = 50;
const TRY_MS = 200;

export interface INewMenuItem {
  command: string;
  args?: Record<string, string>;
}

/** The New dropdown's menu, once the toolbar (built from settings) has it; null without one. */
async function findNewMenu(browser: IDefaultFileBrowser): Promise<Menu | null> {
  for (let i = 0; i < TRIES; i++) {
    const names = [...browser.toolbar.names()];
    const at = names.indexOf(ITEM);
    if (at >= 0) {
      const widget: Widget | undefined = [...browser.toolbar.children()][at];
      return widget instanceof MenuBar ? (widget.menus[0] ?? null) : null;
    }
    await new Promise(resolve => setTimeout(resolve, TRY_MS));
  }
  return null;
}

/** The tree's own item for a new notebook on a kernel spec. */
const NEW_ON_KERNEL = 'notebook:create-new';

/** `ours(kernelName)`: the item that stands in for the tree's item of that kernel spec, if any. */
export async function extendNewMenu(
  app: JupyterFrontEnd,
  browser: IDefaultFileBrowser,
  items: INewMenuItem[],
  ours: (kernelName: string) => INewMenuItem | null
): Promise<void> {
  const menu = await findNewMenu(browser);
  if (!menu) {
    return;
  }
  const add = () => {
    menu.items.forEach((item, index) => {
      const instead = item.command === NEW_ON_KERNEL && ours(String(item.args.kernelName));
      if (instead) {
        menu.removeItemAt(index);
        menu.insertItem(index, { command: instead.command, args: instead.args ?? {} });
      }
    });
    if (menu.items.some(i => i.command === items[0]?.command)) {
      return;
    }
    menu.addItem({ type: 'separator' });
    for (const item of items) {
      menu.addItem({ command: item.command, args: item.args ?? {} });
    }
  };
  add();
  // Connected after the tree's own handler (which clears the menu and adds the kernels again).
  app.serviceManager.kernelspecs.specsChanged.connect(add);
}
