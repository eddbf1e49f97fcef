// Status bar item: the vGPU allocation of the current notebook's kernel, from the shared model; when
// the server is about to stop it for being idle, "idle: stops at 10:42 · Keep" instead.
import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { IAllocation, errorText } from './api';
import { cullWarning } from './culling';
import { CurrentSession } from './current';
import {
  cullNotice,
  formatAllocation,
  formatBytes,
  formatDuration,
  formatMib,
  formatShort,
  secondsSince
} from './format';
import { IVGPUModel } from './model';

/**
 * "vGPU: 1 × 4 GiB · 1.2 GiB used · gpu-1", "CPU only", "idle: stops at 10:42 · Keep", or nothing
 * for a kernel that is not a vGPU kernel (the item then hides).
 */
export class VGPUStatus extends Widget {
  private allocation: IAllocation | null = null;
  private readonly session: CurrentSession;
  private readonly interest: IDisposable;
  private readonly _activeStateChanged = new Signal<this, void>(this);

  constructor(
    private readonly model: IVGPUModel,
    private readonly tracker: INotebookTracker,
    private readonly trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-StatusBar-TextItem');
    this.addClass('orion-StatusItem');
    // The model polls this server's allocations while the current notebook has a kernel.
    this.interest = model.addInterest(() => (this.kernelId() ? 'allocations' : 'none'));
    model.changed.connect(this.showCurrent, this);
    this.session = new CurrentSession(tracker, (context, on) => {
      const how = on ? 'connect' : 'disconnect';
      context.kernelChanged[how](this.kernelChanged, this);
      context.statusChanged[how](this.statusChanged, this);
    });
    tracker.currentChanged.connect(this.watchCurrent, this);
    this.watchCurrent();
  }

  /** Whether the current notebook runs on a vGPU kernel (the item shows only then). */
  get isActive(): boolean {
    return this.allocation !== null;
  }

  get activeStateChanged(): ISignal<this, void> {
    return this._activeStateChanged;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.interest.dispose();
    this.model.changed.disconnect(this.showCurrent, this);
    this.tracker.currentChanged.disconnect(this.watchCurrent, this);
    super.dispose();
  }

  private kernelId(): string | undefined {
    return this.tracker.currentWidget?.sessionContext.session?.kernel?.id;
  }

  private watchCurrent(): void {
    this.session.follow();
    this.kernelChanged();
  }

  private kernelChanged(): void {
    this.showCurrent();
    const id = this.kernelId();
    if (id && !this.model.allocation(id)) {
      void this.model.refresh(); // a kernel the model has not seen yet
    }
  }

  /** A kernel that died or was shut down (by the vGPU panel, say) no longer holds its vGPU. */
  private statusChanged(_: ISessionContext, status: string): void {
    if (status === 'dead' || status === 'unknown') {
      void this.model.refresh();
    }
  }

  /** Shows the current notebook kernel's allocation, as the model last saw it. */
  private showCurrent(): void {
    const id = this.kernelId();
    const part = this.model.allocations;
    if (id && part?.status === 'rejected' && this.allocation?.kernel_id === id) {
      // Keep showing what was known; say why it may be stale.
      this.node.title = this.trans.__('vGPU allocation unknown: %1', errorText(part.reason));
      return;
    }
    this.render(id ? this.model.allocation(id) : null);
  }

  private render(allocation: IAllocation | null): void {
    const trans = this.trans;
    const wasActive = this.isActive;
    this.allocation = allocation;
    const warning = allocation && cullWarning(allocation, this.model, trans);
    this.toggleClass('orion-mod-warning', !!warning);
    if (allocation && warning) {
      this.node.replaceChildren(warning);
      this.node.title = `${cullNotice(allocation, trans)?.title}\n${tooltip(allocation, trans)}`;
    } else if (allocation) {
      const parts = [
        allocation.vgpus
          ? trans.__('vGPU: %1', formatShort(allocation.vgpus, allocation.memory_mib, trans))
          : trans.__('CPU only')
      ];
      if (allocation.vgpus && typeof allocation.memory_used === 'number') {
        parts.push(trans.__('%1 used', formatBytes(allocation.memory_used)));
      }
      if (allocation.vgpus && allocation.node) {
        parts.push(allocation.node);
      }
      this.node.textContent = parts.join(' · ');
      this.node.title = tooltip(allocation, trans);
    } else {
      this.node.textContent = '';
      this.node.title = '';
    }
    if (wasActive !== this.isActive) {
      this._activeStateChanged.emit();
    }
  }
}

function tooltip(a: IAllocation, trans: TranslationBundle): string {
  const where = a.pod
    ? trans.__('pod %1', a.pod)
    : a.pid
      ? trans.__('local process %1', a.pid)
      : trans.__('no pod');
  const lines = [
    trans.__('vGPU kernel %1 (%2)', a.kernel_spec, where),
    a.label ?? formatAllocation(a.vgpus, a.memory_mib, a.compute_percent, trans),
    a.cluster
      ? trans.__('backend: %1 on %2', a.backend, a.cluster)
      : trans.__('backend: %1', a.backend),
    trans.__('vGPUs: %1, memory cap %2 per vGPU', a.vgpus ?? 0, formatMib(a.memory_mib)) +
      (a.compute_percent ? trans.__(', %1% compute', a.compute_percent) : '')
  ];
  if (typeof a.memory_used === 'number') {
    const age = secondsSince(a.memory_sampled_at);
    const how = [
      a.memory_source,
      age !== null && trans.__('measured %1 ago', formatDuration(age, trans))
    ].filter(Boolean);
    lines.push(
      how.length
        ? trans.__('vGPU memory in use: %1 (%2)', formatBytes(a.memory_used), how.join(', '))
        : trans.__('vGPU memory in use: %1', formatBytes(a.memory_used))
    );
  }
  lines.push(
    trans.__('node: %1 · %2', a.node ?? '—', a.phase),
    trans.__('Click to open the vGPU panel')
  );
  return lines.join('\n');
}
