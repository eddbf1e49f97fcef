// Park and resume from the page: Park saves the current notebook kernel's variables and stops it
// (its vGPU goes back to the pool; the notebook stays open), Resume starts a new kernel with them
// and moves the notebook's session onto it, then a notification says what came back and what did
// not. The status bar item ("Park", or "parked 10:42 · Resume" for a notebook whose kernel was
// parked, by its user or by idle culling) and the sidebar's parked notebooks use these flows.
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, ISessionContext, Notification, showDialog } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { INotebookTracker } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ISnapshot, deleteSnapshot, errorText, parkKernel, resumeSnapshot } from './api';
import { Child, actionButton, h } from './dom';
import {
  formatDuration,
  formatParked,
  formatSize,
  parkReport,
  resumeReport,
  secondsSince
} from './format';
import { openOnKernel } from './launch';
import { IVGPUModel } from './model';

/** What the flows use; the tracker and the document manager may be missing (Notebook 7's tree). */
export interface IParkContext {
  app: JupyterFrontEnd;
  model: IVGPUModel;
  trans: TranslationBundle;
  tracker: INotebookTracker | null;
  docManager: IDocumentManager | null;
}

/** The park and resume flows, and which kernels and snapshots are being parked or resumed now. */
export class Parking {
  private readonly working = new Set<string>();
  private readonly _changed = new Signal<this, void>(this);

  constructor(private readonly ctx: IParkContext) {}

  /** Emitted when a park or resume starts or ends. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Whether this kernel (or snapshot) is being parked (or resumed) by this page. */
  busy(id: string): boolean {
    return this.working.has(id);
  }

  /** Parks the kernel: its variables saved, the kernel stopped, what was not saved said. */
  async park(kernelId: string, what: string): Promise<void> {
    const { app, model, trans } = this.ctx;
    await this.work(kernelId, async () => {
      try {
        const parked = await parkKernel(kernelId);
        const partial = Object.keys(parked.not_saved).length > 0;
        Notification.emit(parkReport(parked, what, trans), partial ? 'warning' : 'success', {
          autoClose: partial ? false : 8000
        });
      } catch (error) {
        // A refused park leaves the kernel running: nothing was lost.
        Notification.error(
          trans.__('Could not park %1 (the kernel keeps running): %2', what, errorText(error)),
          { autoClose: false }
        );
        return;
      }
      // The kernel is gone: drop its session here too, so the notebook shows "parked · Resume".
      await Promise.all([
        app.serviceManager.sessions.refreshRunning(),
        app.serviceManager.kernels.refreshRunning()
      ]).catch(() => undefined);
    });
    await model.refresh();
  }

  /**
   * Resumes the snapshot on a new kernel (`spec`, else the parked one's) and moves its notebook onto
   * it: the notebook open in `context` (or any open on the snapshot's path), else it opens.
   */
  async resume(snapshot: ISnapshot, context?: ISessionContext | null, spec?: string): Promise<void> {
    const { model, trans } = this.ctx;
    const what = snapshot.path || snapshot.id;
    await this.work(snapshot.id, async () => {
      const id = Notification.emit(trans.__('Resuming %1…', what), 'in-progress', {
        autoClose: false
      });
      let resumed;
      try {
        resumed = await resumeSnapshot(snapshot.id, spec);
      } catch (error) {
        // A full pool refuses as any launch does; the snapshot stays.
        Notification.update({
          id,
          type: 'error',
          message: trans.__('Could not resume %1: %2', what, errorText(error)),
          autoClose: false
        });
        return;
      }
      try {
        await this.attach(resumed.kernel_id, resumed.spec, resumed.path ?? snapshot.path, context);
      } catch (error) {
        Notification.update({
          id,
          type: 'error',
          message: trans.__(
            'Kernel %1 runs with the variables of %2, but the notebook could not be moved onto it: %3',
            resumed.kernel_id,
            what,
            errorText(error)
          ),
          autoClose: false
        });
        return;
      }
      const report = resumeReport(resumed, what, trans);
      Notification.update({
        id,
        type: report.complete ? 'success' : 'warning',
        message: report.text,
        autoClose: report.complete ? 8000 : false
      });
    });
    await model.refresh();
  }

  /**
   * Resume on a kernel the user picks: the parked spec first, then every other spec this server
   * offers (a CPU-only kernel to keep preparing, a bigger slice to train); the server checks it
   * as any launch.
   */
  async resumeOn(snapshot: ISnapshot): Promise<void> {
    const { app, trans } = this.ctx;
    await app.serviceManager.kernelspecs.ready;
    const specs = app.serviceManager.kernelspecs.specs?.kernelspecs ?? {};
    const body = new SpecChoice(snapshot.spec, specs, trans);
    const answer = await showDialog({
      title: trans.__('Resume %1 on…', snapshot.path || snapshot.id),
      body,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: trans.__('Resume') })]
    });
    if (answer.button.accept && answer.value) {
      await this.resume(snapshot, null, answer.value);
    }
  }

  /** Delete asks first: the variables in the snapshot are gone for good. */
  async remove(snapshot: ISnapshot): Promise<void> {
    const { model, trans } = this.ctx;
    const answer = await showDialog({
      title: trans.__('Delete parked notebook'),
      body: trans.__(
        'Delete the snapshot of %1 (%2)? Its variables cannot be resumed afterwards.',
        snapshot.path || snapshot.id,
        formatSize(snapshot.bytes)
      ),
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: trans.__('Delete') })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await deleteSnapshot(snapshot.id);
    } catch (error) {
      Notification.error(trans.__('Could not delete the snapshot: %1', errorText(error)), {
        autoClose: false
      });
    }
    await model.refresh();
  }

  /** The notebook's session moves onto the resumed kernel before its next cell runs. */
  private async attach(
    kernelId: string,
    spec: string,
    path: string | null | undefined,
    context?: ISessionContext | null
  ): Promise<void> {
    const { app, tracker } = this.ctx;
    const open =
      context ?? (path ? tracker?.find(w => w.sessionContext.path === path)?.sessionContext : null);
    if (open) {
      // The parked kernel's session is gone on the server: the page forgets it first, so the
      // notebook starts a session on the new kernel (or moves its live one onto it).
      await app.serviceManager.sessions.refreshRunning();
      await open.changeKernel({ id: kernelId });
    } else if (path) {
      await openOnKernel({ ...this.ctx, defaultBrowser: null }, path, { id: kernelId, name: spec });
    }
  }

  private async work(id: string, task: () => Promise<void>): Promise<void> {
    this.working.add(id);
    this._changed.emit();
    try {
      await task();
    } finally {
      this.working.delete(id);
      this._changed.emit();
    }
  }
}

/** The resume dialog's body: one choice of kernel spec, the parked one selected. */
class SpecChoice extends Widget implements Dialog.IBodyWidget<string> {
  private readonly select: HTMLSelectElement;

  constructor(
    parked: string | null | undefined,
    specs: Record<string, { display_name: string } | undefined>,
    trans: TranslationBundle
  ) {
    super();
    this.addClass('orion-ResumeOn');
    this.select = document.createElement('select');
    this.select.className = 'jp-mod-styled orion-ResumeOn-spec';
    this.select.setAttribute('aria-label', trans.__('Kernel to resume on'));
    const label = (name: string): string => specs[name]?.display_name ?? name;
    const names = Object.keys(specs).sort((a, b) =>
      a === parked ? -1 : b === parked ? 1 : label(a).localeCompare(label(b))
    );
    for (const name of names) {
      const text = name === parked ? trans.__('%1 (as parked)', label(name)) : label(name);
      const option = new Option(text, name);
      option.selected = name === parked;
      this.select.append(option);
    }
    const hint = document.createElement('p');
    hint.textContent = trans.__(
      'The variables come back on the kernel you choose; its vGPU is asked for as any launch.'
    );
    this.node.append(hint, this.select);
  }

  getValue(): string {
    return this.select.value;
  }
}

/** The sidebar's parked notebooks: path, size, age and spec, each with Resume, Resume on… and Delete. */
export function renderParked(
  snapshots: ISnapshot[],
  parking: Parking,
  trans: TranslationBundle
): Child[] {
  if (!snapshots.length) {
    return [h('p', { class: 'orion-Panel-empty' }, trans.__('No parked notebooks.'))];
  }
  return snapshots.map(s => {
    if (s.error) {
      return h(
        'div',
        { class: 'orion-Kernel orion-Parked orion-mod-damaged', 'data-snapshot-id': s.id },
        h('div', { class: 'orion-Kernel-name' }, s.id),
        h('div', { class: 'orion-Kernel-line orion-Panel-error' }, s.error),
        actionButton(trans.__('Delete'), trans.__('Delete this snapshot'), () =>
          parking.remove(s)
        )
      );
    }
    const age = secondsSince(s.created);
    const busy = parking.busy(s.id);
    const resume = actionButton(
      busy ? trans.__('Resuming…') : trans.__('Resume'),
      trans.__('Start a kernel with these variables and open %1 on it', s.path || s.id),
      () => parking.resume(s),
      'plain'
    );
    resume.disabled = busy;
    // Below the lines: a notebook's path takes the card's whole width.
    const tools = h(
      'div',
      { class: 'orion-Kernel-tools orion-Parked-tools' },
      resume,
      actionButton(
        trans.__('Resume on…'),
        trans.__('Resume on another kernel: CPU-only, or a bigger slice'),
        () => parking.resumeOn(s),
        'plain'
      ),
      actionButton(trans.__('Delete'), trans.__('Delete this snapshot'), () => parking.remove(s))
    );
    const saved = s.saved?.length ?? 0;
    const notSaved = Object.keys(s.not_saved ?? {}).length;
    return h(
      'div',
      {
        class: 'orion-Kernel orion-Parked',
        'data-snapshot-id': s.id,
        title: [
          trans.__('Saved: %1', (s.saved ?? []).join(', ') || '—'),
          notSaved
            ? trans.__(
                'Not saved: %1',
                Object.entries(s.not_saved ?? {})
                  .map(([name, why]) => `${name} (${why})`)
                  .join('; ')
              )
            : ''
        ]
          .filter(Boolean)
          .join('\n')
      },
      h('div', { class: 'orion-Kernel-name' }, s.path || trans.__('no notebook')),
      h(
        'div',
        { class: 'orion-Kernel-line' },
        [
          formatParked(s, trans),
          age !== null && trans.__('%1 ago', formatDuration(age, trans)),
          formatSize(s.bytes),
          s.vgpu?.label || s.spec,
          trans._n('%1 variable', '%1 variables', saved)
        ]
          .filter(Boolean)
          .join(' · ')
      ),
      tools
    );
  });
}
