// Starting a vGPU kernel and opening a notebook on it: the launch progress as a notification (with
// the place in the queue while the launch waits for a vGPU, and its Cancel), the
// notebook's session created on the started kernel (so any page that opens the notebook, JupyterLab
// or Notebook 7, attaches to it), and the MNIST / FaceNet demos.
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification, showErrorMessage } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { Kernel, SessionAPI } from '@jupyterlab/services';
import { TranslationBundle } from '@jupyterlab/translation';
import { UUID } from '@lumino/coreutils';
import { Poll } from '@lumino/polling';

import {
  IEvent,
  IQueued,
  IStartedKernel,
  cancelQueued,
  errorText,
  getDemos,
  getEvents,
  isCancelled,
  startDemo
} from './api';
import { formatQueued } from './format';
import { IVGPUModel } from './model';

const EVENTS_MS = 500;
/** While the launch waits in the queue its place changes slowly: fewer requests. */
const QUEUED_EVENTS_MS = 2000;
/** A launch that takes longer than this shows its progress (a quick one just opens). */
const NOTIFY_AFTER_MS = 800;

/** What the launch flows use; all but the app, the model and the bundle may be missing. */
export interface ILaunchContext {
  app: JupyterFrontEnd;
  model: IVGPUModel;
  trans: TranslationBundle;
  docManager: IDocumentManager | null;
  defaultBrowser: IDefaultFileBrowser | null;
}

/** The file browser's current folder (with its drive, as the document manager takes paths). */
export function currentFolder(ctx: ILaunchContext): string {
  return ctx.defaultBrowser?.model.path ?? '';
}

/** The same folder as the server names it (no drive prefix). */
export function serverPath(ctx: ILaunchContext, path: string): string {
  return ctx.app.serviceManager.contents.localPath(path);
}

/**
 * Runs `start(kernelId)` (a POST that answers once the kernel runs) while the server's launch
 * messages for that kernel id are shown in a notification; while the launch waits in the queue, the
 * notification says its place ("Waiting for a vGPU: 3rd in line, about 2 min") and offers Cancel. A
 * refusal throws, with no notification left (the caller shows the server's message where it
 * belongs); so does a cancelled launch (`isCancelled`: the caller says nothing).
 */
export async function withProgress<T>(
  ctx: Pick<ILaunchContext, 'trans' | 'model'>,
  title: string,
  start: (kernelId: string) => Promise<T>
): Promise<T> {
  const { trans, model } = ctx;
  const kernelId = UUID.uuid4();
  model.ownLaunch(kernelId); // this flow opens its notebook: the model does not offer it
  let id: string | null = null;
  let latest = '';
  let queued: IQueued | null = null;
  let wasQueued = false;
  let cancelling = false;
  let after = 0;
  const message = () => {
    const now = cancelling
      ? trans.__('Cancelling…')
      : queued
        ? formatQueued(queued, trans)
        : latest;
    return now ? `${title}\n${now}` : title;
  };
  const cancel = async () => {
    cancelling = true;
    show();
    try {
      await cancelQueued(kernelId); // the POST then answers 409, reason "cancelled"
    } catch (error) {
      cancelling = false;
      latest = trans.__('Could not cancel: %1', errorText(error));
      show();
    }
  };
  const show = () => {
    if (id) {
      Notification.update({
        id,
        message: message(),
        type: 'in-progress',
        actions:
          queued && !cancelling
            ? [
                {
                  label: trans.__('Cancel'),
                  caption: trans.__("Give up this launch's place in the queue"),
                  displayType: 'warn',
                  callback: event => {
                    event.preventDefault(); // the notification stays until the launch ends
                    void cancel();
                  }
                }
              ]
            : []
      });
    }
  };
  let events: Poll | null = null;
  // Progress (and the events it shows) only for a launch that takes a while: the server knows the
  // kernel id once the request passed its checks, and a quick launch needs no progress.
  const timer = setTimeout(() => {
    id = Notification.emit(message(), 'in-progress', { autoClose: false });
    const poll = (events = new Poll({
      factory: async () => {
        let found: IEvent[];
        try {
          found = await getEvents(kernelId, after);
        } catch {
          return; // not known to the server yet: the request is still being checked
        }
        const before = queued;
        for (const event of found) {
          after = Math.max(after, event.seq);
          latest = event.message;
          queued = event.queued ?? null; // the latest event says whether it still waits
        }
        if (queued && !wasQueued) {
          wasQueued = true;
          void model.refreshQueue(); // the status bar shows the queue too
        }
        if (!!before !== !!queued) {
          const interval = queued ? QUEUED_EVENTS_MS : EVENTS_MS;
          poll.frequency = { interval, backoff: false, max: interval };
        }
        if (found.length) {
          show();
        }
      },
      frequency: { interval: EVENTS_MS, backoff: false },
      name: 'orion-jupyter:launch-events'
    }));
  }, NOTIFY_AFTER_MS);
  try {
    const result = await start(kernelId);
    if (id) {
      Notification.update({
        id,
        message: trans.__('%1\nThe kernel is running.', title),
        type: 'success',
        autoClose: 3000,
        actions: []
      });
    }
    return result;
  } catch (error) {
    if (id) {
      Notification.dismiss(id);
    }
    throw error;
  } finally {
    clearTimeout(timer);
    (events as Poll | null)?.dispose();
    if (wasQueued) {
      void model.refresh(); // no longer waiting
    }
  }
}

/**
 * Opens `path` on the kernel just started: its session is created (or moved) onto that kernel
 * first, so the notebook attaches to it wherever it is opened, then the document is opened.
 * The session is made through the sessions REST API alone: a session connection would open a
 * kernel websocket only to close it at once, and a websocket closed while the server still
 * prepares it fails there with an uncaught exception and a 500 (jupyter_server#1265).
 */
export async function openOnKernel(
  ctx: ILaunchContext,
  path: string,
  kernel: Pick<IStartedKernel, 'id' | 'name'>
): Promise<void> {
  const sessions = ctx.app.serviceManager.sessions;
  const settings = ctx.app.serviceManager.serverSettings;
  const local = serverPath(ctx, path);
  const existing = await sessions.findByPath(local);
  if (!existing) {
    await SessionAPI.startSession(
      {
        path: local,
        type: 'notebook',
        name: PathExt.basename(local),
        // The sessions API takes a running kernel's id (JupyterLab's SessionContext sends it too).
        kernel: { id: kernel.id } as Partial<Pick<Kernel.IModel, 'name'>>
      },
      settings
    );
  } else if (existing.kernel?.id !== kernel.id) {
    await SessionAPI.updateSession(
      { id: existing.id, kernel: { id: kernel.id } },
      settings
    );
  }
  await sessions.refreshRunning();
  const preference = { id: kernel.id, name: kernel.name };
  if (ctx.docManager) {
    ctx.docManager.open(path, 'default', preference);
  } else {
    await ctx.app.commands.execute('docmanager:open', {
      path,
      factory: 'Notebook',
      kernel: preference
    });
  }
}

/** The launcher's demo cards: name, title. */
export const DEMOS: { name: string; label: (trans: TranslationBundle) => string }[] = [
  { name: 'mnist', label: trans => trans.__('MNIST on vGPU') },
  { name: 'facenet', label: trans => trans.__('FaceNet on vGPU') }
];

/**
 * "MNIST on vGPU": the server places the demo notebook (never over the user's copy) and starts a
 * vGPU kernel for it; the notebook opens on that kernel. A demo notebook whose session still runs
 * is opened as it is: a second click does not start (and strand) a second kernel.
 */
export async function openDemo(ctx: ILaunchContext, name: string): Promise<void> {
  const { trans } = ctx;
  const title = DEMOS.find(d => d.name === name)?.label(trans) ?? name;
  try {
    const demo = (await getDemos()).find(d => d.name === name);
    const running = demo && (await ctx.app.serviceManager.sessions.findByPath(demo.path));
    if (demo && running?.kernel) {
      await openOnKernel(ctx, demo.path, running.kernel);
      return;
    }
  } catch {
    // an older server without GET demos: start it
  }
  let started;
  try {
    started = await withProgress(ctx, trans.__('Starting %1…', title), kernelId =>
      startDemo(name, { kernel_id: kernelId })
    );
  } catch (error) {
    if (isCancelled(error)) {
      return; // its place in the queue was given up: nothing to say
    }
    await showErrorMessage(trans.__('Could not start %1', title), errorText(error));
    return;
  }
  void ctx.model.refresh();
  await openOnKernel(ctx, started.path, {
    id: started.kernel_id,
    name: started.kernel?.name ?? ''
  });
}
