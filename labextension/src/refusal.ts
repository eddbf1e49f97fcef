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

/** Whether the notebook is new and empty: untitled, unchanged, at most one empty cell. */
export function isFreshNotebook(
  path: string,
  dirty: boolean,
  cellSources: string[]
): boolean {
  return (
    UNTITLED.test(PathExt.basename(path)) &&
    !dirty &&
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
  let starting = false;
  const onStatus = (_: unknown, status: string) => {
    starting = starting || status === 'starting';
  };
  // A failed start: JupyterLab hands over "no session" (null after null) after it began starting.
  const onSession = (_: unknown, change: { oldValue: unknown; newValue: unknown }) => {
    session.statusChanged.disconnect(onStatus);
    session.sessionChanged.disconnect(onSession);
    if (starting && change.oldValue === null && change.newValue === null) {
      void afterDialogs().then(() => remove(app, panel, trans));
    }
  };
  session.statusChanged.connect(onStatus);
  session.sessionChanged.connect(onSession);
}

/** Resolves once no dialog is open (the user read JupyterLab's error and closed it). */
function afterDialogs(): Promise<void> {
  return new Promise(resolve => {
    const check = () =>
      document.querySelector('.jp-Dialog') ? setTimeout(check, DIALOG_POLL_MS) : resolve();
    setTimeout(check, DIALOG_POLL_MS);
  });
}

async function remove(
  app: JupyterFrontEnd,
  panel: NotebookPanel,
  trans: TranslationBundle
): Promise<void> {
  const { context } = panel;
  const model = context.model;
  const sources = model ? Array.from(model.cells, cell => cell.sharedModel.getSource()) : [];
  if (panel.isDisposed || panel.sessionContext.session || !isFreshNotebook(context.path, model.dirty, sources)) {
    return;
  }
  const path = context.path;
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
