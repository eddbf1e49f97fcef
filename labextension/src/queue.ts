// The fair queue, as this user sees it: the status bar's "vGPU queue: 3rd" while a launch of theirs
// waits (from the shared model, which asks the server at start-up and while something waits), a
// dialog with each waiting launch and its Cancel, and, for a launch started before a page reload,
// a notification offering to open its notebook once its kernel runs.
import { Dialog, Notification, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import { IQueueEntry, cancelQueued, errorText } from './api';
import { actionButton, h } from './dom';
import { formatDuration, formatQueueStatus, formatQueued } from './format';
import { ILaunchContext, openOnKernel } from './launch';
import { IQueueLeft, IVGPUModel } from './model';
import { ModelStatusItem } from './statusitem';

/** Gives up a waiting launch's place (its pending start then ends quietly); errors are shown. */
export async function cancelLaunch(
  model: IVGPUModel,
  kernelId: string,
  trans: TranslationBundle
): Promise<boolean> {
  try {
    await cancelQueued(kernelId);
    return true;
  } catch (error) {
    await showErrorMessage(trans.__('Could not cancel the waiting launch'), errorText(error));
    return false;
  } finally {
    await model.refresh();
  }
}

/** "vGPU queue: 3rd" while a launch of this user waits; click: the waiting launches. */
export class QueueStatus extends ModelStatusItem {
  constructor(model: IVGPUModel, trans: TranslationBundle) {
    super(model, trans, 'orion-QueueStatus');
    this.node.onclick = () => void showQueue(this.model, this.trans);
    this.render();
  }

  protected render(): void {
    const { trans } = this;
    const waiting = this.model.waiting;
    const shown = waiting.length > 0;
    this.node.textContent = shown ? formatQueueStatus(waiting, trans) : '';
    this.node.title = shown
      ? [...waiting.map(w => describe(w, trans)), trans.__('Click to see or cancel')].join('\n')
      : '';
    this.setActive(shown);
  }
}

/** "Waiting for a vGPU: 3rd in line, about 2 min · course ai101 · 1 vGPU × 4Gi · …" */
function describe(w: IQueueEntry, trans: TranslationBundle): string {
  return [formatQueued(w, trans), ...details(w, trans)].join(' · ');
}

/** "course ai101", "1 vGPU × 4Gi", "orion-1x4gi", "waiting 3 min", "labs/mnist.ipynb" */
function details(w: IQueueEntry, trans: TranslationBundle): string[] {
  const waited = Date.now() / 1000 - w.since;
  return [
    w.course && trans.__('course %1', w.course),
    trans._n('%1 vGPU × %2', '%1 vGPUs × %2', w.vgpus, w.memory),
    w.kernel_spec_name,
    isFinite(waited) && trans.__('waiting %1', formatDuration(waited, trans)),
    w.path
  ].filter((part): part is string => !!part);
}

/** The waiting launches, kept current while shown, each with its Cancel. */
export class QueueList extends Widget {
  constructor(
    private readonly model: IVGPUModel,
    private readonly trans: TranslationBundle
  ) {
    super();
    this.addClass('orion-QueueList');
    model.changed.connect(this.render, this);
    this.render();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  private render(): void {
    const { model, trans } = this;
    const waiting = [...model.waiting].sort((a, b) => a.position - b.position);
    if (!waiting.length) {
      this.node.replaceChildren(
        h('p', { class: 'orion-Panel-empty' }, trans.__('No launch of yours waits for a vGPU.'))
      );
      return;
    }
    this.node.replaceChildren(
      ...waiting.map(w =>
        h(
          'div',
          { class: 'orion-Kernel orion-Queued', 'data-kernel-id': w.kernel_id },
          h(
            'div',
            { class: 'orion-Kernel-head' },
            h('span', { class: 'orion-Kernel-name' }, formatQueued(w, trans)),
            actionButton(
              trans.__('Cancel'),
              trans.__('Give up this launch\'s place in the queue'),
              () => cancelLaunch(model, w.kernel_id, trans)
            )
          ),
          h('div', { class: 'orion-Kernel-line' }, details(w, trans).join(' · '))
        )
      )
    );
  }
}

/** The queue dialog (the status bar item's click). */
export async function showQueue(model: IVGPUModel, trans: TranslationBundle): Promise<void> {
  const body = new QueueList(model, trans);
  void model.refresh();
  try {
    await showDialog({
      title: trans.__('Waiting for a vGPU'),
      body,
      buttons: [Dialog.okButton({ label: trans.__('Close') })]
    });
  } finally {
    body.dispose();
  }
}

/**
 * A launch from before a page reload left the queue and its kernel runs: offer its notebook (or,
 * when it was started for a folder, a new notebook there) on that kernel.
 */
export function offerToOpen(ctx: ILaunchContext, left: IQueueLeft): string {
  const { trans } = ctx;
  const { entry, allocation } = left;
  const path = entry.path;
  const notebook = !!path && /\.ipynb$/i.test(path);
  const kernel = { id: allocation.kernel_id, name: allocation.kernel_spec || entry.kernel_spec_name };
  const open = async () => {
    try {
      let target = path ?? '';
      if (!notebook) {
        const folder = path ?? '';
        const created = await (ctx.docManager
          ? ctx.docManager.newUntitled({ path: folder, type: 'notebook' })
          : ctx.app.serviceManager.contents.newUntitled({ path: folder, type: 'notebook' }));
        target = created.path;
      }
      await openOnKernel(ctx, target, kernel);
    } catch (error) {
      await showErrorMessage(
        trans.__('The vGPU kernel runs, but its notebook could not be opened'),
        errorText(error)
      );
    }
  };
  const what = allocation.label ?? `${entry.vgpus} × ${entry.memory}`;
  return Notification.success(
    notebook
      ? trans.__('Your vGPU kernel (%1) left the queue and runs: open %2 on it?', what, path ?? '')
      : trans.__('Your vGPU kernel (%1) left the queue and runs: open a new notebook on it?', what),
    {
      autoClose: false,
      actions: [
        {
          label: notebook ? trans.__('Open notebook') : trans.__('New notebook'),
          caption: trans.__('Open the notebook on the kernel that waited for a vGPU'),
          displayType: 'accent',
          callback: () => void open()
        }
      ]
    }
  );
}
