// A notebook created from a kernel's launcher card whose kernel the server refused (a full pool,
// a quota): JupyterLab shows "Error Starting Kernel" and would leave the new, empty notebook behind
// on no kernel. Once that dialog is closed, the notebook is closed and its file deleted, and a
// notification says so. Only a fresh one: an untitled notebook with nothing typed in it.
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';

const UNTITLED = /^Untitled\d*\.ipynb$/;
const DIALOG_POLL_MS = 200;
/** How long the error dialog is looked for (in polls) before the notebook goes without it. */
const DIALOG_TRIES = 25;

/** Whether the notebook is new and empty: untitled, at most one empty cell (its kernel metadata
 * may have changed: nothing the user typed). */
export function isFreshNotebook(path: string, cellSources: string[]): boolean {
  return (
    UNTITLED.test(PathExt.basename(path)) &&
    cellSources.length <= 1 &&
    cellSources.every(source => !source.trim())
  );
}

export function removeRefusedNotebooks(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  trans: TranslationBundle
): void {
  tracker.widgetAdded.connect((_, panel) => watch(app, panel, trans));
}

function watch(app: JupyterFrontEnd, panel: NotebookPanel, trans: TranslationBundle): void {
  const session = panel.sessionContext;
  // A failed start: JupyterLab hands over "no session" (null after null; a stop's has the old one),
  // then opens its error dialog.
  const onSession = (_: unknown, change: { oldValue: unknown; newValue: unknown }) => {
    session.sessionChanged.disconnect(onSession);
    if (change.oldValue === null && change.newValue === null) {
      const before = new Set(document.querySelectorAll('.jp-Dialog'));
      void errorClosed(before).then(() => remove(app, panel, trans));
    }
  };
  session.sessionChanged.connect(onSession);
}

/**
 * Resolves once the error dialog that follows the failure is closed (the user read it), or when none
 * came. It is the first new dialog without a kernel choice in it: JupyterLab's "Select Kernel" may
 * open right after it, and stays open after it.
 */
function errorClosed(before: Set<Element>): Promise<void> {
  return new Promise(resolve => {
    let error: Element | null = null;
    let tries = 0;
    const check = () => {
      error ??=
        [...document.querySelectorAll('.jp-Dialog')].find(
          d => !before.has(d) && !d.querySelector('select')
        ) ?? null;
      const waiting = error ? error.isConnected : ++tries < DIALOG_TRIES;
      if (waiting) {
        setTimeout(check, DIALOG_POLL_MS);
      } else {
        resolve();
      }
    };
    setTimeout(check, DIALOG_POLL_MS);
  });
}

/** JupyterLab's "Select Kernel" for the removed notebook (it follows the error): dismissed. */
function dismissKernelChoice(name: string): void {
  for (const dialog of document.querySelectorAll<HTMLElement>('.jp-Dialog')) {
    if (dialog.querySelector('select') && dialog.textContent?.includes(`"${name}"`)) {
      dialog.dispatchEvent(
        new KeyboardEvent('keydown', { key: 'Escape', keyCode: 27, bubbles: true } as KeyboardEventInit)
      );
    }
  }
}

async function remove(
  app: JupyterFrontEnd,
  panel: NotebookPanel,
  trans: TranslationBundle
): Promise<void> {
  if (panel.isDisposed) {
    return; // (its model, too: nothing to read)
  }
  const { context } = panel;
  const model = context.model;
  const sources = model ? Array.from(model.cells, cell => cell.sharedModel.getSource()) : [];
  if (panel.sessionContext.session || !isFreshNotebook(context.path, sources)) {
    return;
  }
  const path = context.path;
  await new Promise(resolve => setTimeout(resolve, DIALOG_POLL_MS)); // the kernel choice to open
  dismissKernelChoice(PathExt.basename(path));
  panel.dispose();
  try {
    await app.serviceManager.contents.delete(path);
  } catch {
    return; // already gone, or not ours to delete: nothing more to say
  }
  Notification.info(
    trans.__('%1 was removed: its kernel could not start, and it was still empty.', PathExt.basename(path)),
    { autoClose: 8000 }
  );
}
