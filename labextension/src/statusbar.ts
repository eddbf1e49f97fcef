// Status bar item: the vGPU allocation of the current notebook's kernel.
import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import {
  IAllocation,
  errorText,
  formatMemory,
  formatVGPUs,
  getAllocations
} from './api';

const REFRESH_MS = 10_000;

/** "vGPU: 1 × 4 GiB · gpu-1", "CPU only", or nothing for a kernel that is not a vGPU kernel. */
export class VGPUStatus extends Widget {
  private readonly poll: Poll;
  private allocation: IAllocation | null = null;
  private watched: ISessionContext | null = null;
  private readonly _activeStateChanged = new Signal<this, void>(this);

  constructor(private readonly tracker: INotebookTracker) {
    super();
    this.addClass('jp-StatusBar-TextItem');
    this.addClass('orion-StatusItem');
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: REFRESH_MS, backoff: true, max: 6 * REFRESH_MS },
      // No requests while the browser tab is hidden or no notebook has a kernel.
      standby: () => document.hidden || !this.kernelId()
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
    this.poll.dispose();
    super.dispose();
  }

  private kernelId(): string | undefined {
    return this.tracker.currentWidget?.sessionContext.session?.kernel?.id;
  }

  private watchCurrent(): void {
    const context = this.tracker.currentWidget?.sessionContext;
    if (context && context !== this.watched) {
      this.watched?.kernelChanged.disconnect(this.kernelChanged, this);
      this.watched?.statusChanged.disconnect(this.statusChanged, this);
      context.kernelChanged.connect(this.kernelChanged, this);
      context.statusChanged.connect(this.statusChanged, this);
      this.watched = context;
    }
    this.kernelChanged();
  }

  private kernelChanged(): void {
    this.render(null);
    void this.poll.refresh();
  }

  /** A kernel that died or was shut down (by the vGPU panel, say) no longer holds its vGPU. */
  private statusChanged(_: ISessionContext, status: string): void {
    if (status === 'dead' || status === 'unknown') {
      void this.poll.refresh();
    }
  }

  private async refresh(): Promise<void> {
    const kernelId = this.kernelId();
    if (!kernelId) {
      this.render(null);
      return;
    }
    try {
      const allocations = await getAllocations();
      if (kernelId === this.kernelId()) {
        this.render(allocations.find(a => a.kernel_id === kernelId) ?? null);
      }
    } catch (error) {
      this.node.title = `vGPU allocation unknown: ${errorText(error)}`;
      throw error; // the poll backs off
    }
  }

  private render(allocation: IAllocation | null): void {
    const wasActive = this.isActive;
    this.allocation = allocation;
    if (allocation) {
      const where = allocation.node ? ` · ${allocation.node}` : '';
      this.node.textContent = allocation.vgpus
        ? `vGPU: ${formatVGPUs(allocation.vgpus, allocation.memory_mib)}${where}`
        : 'CPU only';
      this.node.title = tooltip(allocation);
    } else {
      this.node.textContent = '';
      this.node.title = '';
    }
    if (wasActive !== this.isActive) {
      this._activeStateChanged.emit();
    }
  }
}

function tooltip(a: IAllocation): string {
  const where = a.pod
    ? `pod ${a.pod}`
    : a.pid
      ? `local process ${a.pid}`
      : 'no pod';
  return [
    `vGPU kernel ${a.kernel_spec} (${where})`,
    `backend: ${a.backend}${a.cluster ? ` on ${a.cluster}` : ''}`,
    `vGPUs: ${a.vgpus ?? 0}, memory cap ${formatMemory(a.memory_mib)} per vGPU` +
      (a.compute_percent ? `, ${a.compute_percent}% compute` : ''),
    `node: ${a.node ?? '—'} · ${a.phase}`,
    'Click to open the vGPU panel'
  ].join('\n');
}
