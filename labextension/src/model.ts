// One model of what the server says about vGPUs, polled once for the whole page: the status bar,
// the sidebar and the "New vGPU notebook" dialog read it, and ask it to refresh after a change.
import { Token } from '@lumino/coreutils';
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import type { IAllocation, IClass, IPool } from './api';

/** What a view needs now: nothing, this server's allocations, or also the pool and the class. */
export type Interest = 'none' | 'allocations' | 'all';

/** Where the model gets its data (the REST API; a fake in the unit tests). */
export interface IVGPUSource {
  allocations(): Promise<IAllocation[]>;
  pool(): Promise<IPool>;
  classKernels(): Promise<IClass>;
}

/** A part of the model: null until first fetched, then the last answer or the last error. */
export type Part<T> = PromiseSettledResult<T> | null;

export interface IVGPUModel extends IDisposable {
  /** Emitted after every fetch (whatever it brought: views also show how long ago things were). */
  readonly changed: ISignal<IVGPUModel, void>;
  readonly allocations: Part<IAllocation[]>;
  readonly pool: Part<IPool>;
  readonly classKernels: Part<IClass>;
  /** This server's allocation of a kernel, when the last fetch had it. */
  allocation(kernelId: string): IAllocation | null;
  /** Poll interval in ms (setting refreshInterval); errors back off up to 6 times it. */
  refreshInterval: number;
  /** The dialog's memory slider maximum, in MiB (setting sliderMaxMemory). */
  sliderMaxMib: number;
  /** Fetch now (what the views want), sharing a fetch already under way. */
  refresh(): Promise<void>;
  /** A view says what it needs; the poll stands by while nobody needs anything. */
  addInterest(interest: () => Interest): IDisposable;
}

export const IVGPUModel = new Token<IVGPUModel>(
  '@orion-jupyter/labextension:IVGPUModel',
  'The vGPU allocations, pool and class, polled once for the status bar, the sidebar and the dialog.'
);

export const DEFAULT_REFRESH_MS = 5_000;
export const DEFAULT_SLIDER_MAX_MIB = 32 * 1024;

const RANK: Record<Interest, number> = { none: 0, allocations: 1, all: 2 };

export class VGPUModel implements IVGPUModel {
  private readonly poll: Poll;
  private readonly interests = new Set<() => Interest>();
  private readonly _changed = new Signal<IVGPUModel, void>(this);
  private _allocations: Part<IAllocation[]> = null;
  private _pool: Part<IPool> = null;
  private _class: Part<IClass> = null;
  private inflight: { interest: Interest; done: Promise<void> } | null = null;
  private _refreshInterval: number;
  private _disposed = false;
  private readonly kernels?: { runningChanged: ISignal<unknown, unknown> };
  private kernelIds: string | null = null;
  sliderMaxMib = DEFAULT_SLIDER_MAX_MIB;

  constructor(
    private readonly source: IVGPUSource,
    options: {
      refreshInterval?: number;
      /** Kernels starting or stopping (the service manager's) refresh the model at once. */
      kernels?: { runningChanged: ISignal<unknown, unknown> };
    } = {}
  ) {
    this._refreshInterval = options.refreshInterval ?? DEFAULT_REFRESH_MS;
    this.poll = new Poll({
      factory: () => this.fetch(),
      frequency: this.frequency(),
      // No requests while the browser tab is hidden or no view needs anything.
      standby: () => hidden() || this.interest() === 'none',
      name: 'orion-jupyter:vgpu'
    });
    this.kernels = options.kernels;
    this.kernels?.runningChanged.connect(this.kernelsChanged, this);
  }

  get changed(): ISignal<IVGPUModel, void> {
    return this._changed;
  }

  get allocations(): Part<IAllocation[]> {
    return this._allocations;
  }

  get pool(): Part<IPool> {
    return this._pool;
  }

  get classKernels(): Part<IClass> {
    return this._class;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  get refreshInterval(): number {
    return this._refreshInterval;
  }

  set refreshInterval(ms: number) {
    if (ms > 0 && ms !== this._refreshInterval) {
      this._refreshInterval = ms;
      this.poll.frequency = this.frequency();
      // The tick already scheduled keeps the old interval unless rescheduled.
      void this.poll.schedule({ interval: ms, phase: 'refreshed' });
    }
  }

  allocation(kernelId: string): IAllocation | null {
    const a = this._allocations;
    return a?.status === 'fulfilled'
      ? (a.value.find(k => k.kernel_id === kernelId) ?? null)
      : null;
  }

  addInterest(interest: () => Interest): IDisposable {
    this.interests.add(interest);
    let disposed = false;
    return {
      get isDisposed() {
        return disposed;
      },
      dispose: () => {
        disposed = true;
        this.interests.delete(interest);
      }
    };
  }

  async refresh(): Promise<void> {
    try {
      await this.fetch();
    } catch {
      // the error is in the part that failed, for the views to show
    }
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this.kernels?.runningChanged.disconnect(this.kernelsChanged, this);
    this.poll.dispose();
    this.interests.clear();
    Signal.clearData(this);
  }

  /** What the views need, all of them together. */
  private interest(): Interest {
    let most: Interest = 'none';
    for (const interest of this.interests) {
      const wanted = interest();
      if (RANK[wanted] > RANK[most]) {
        most = wanted;
      }
    }
    return most;
  }

  private frequency() {
    const interval = this._refreshInterval;
    return { interval, backoff: true, max: 6 * interval };
  }

  /** A kernel started or stopped (not one that merely ran a cell): refresh if a view is shown. */
  private kernelsChanged(_: unknown, models: unknown): void {
    const ids = Array.isArray(models)
      ? models.map(m => String((m as { id?: unknown }).id)).sort().join(' ')
      : null;
    if (ids !== null && ids === this.kernelIds) {
      return;
    }
    this.kernelIds = ids;
    if (this.interest() !== 'none') {
      void this.refresh();
    }
  }

  /** One fetch at a time: a caller joins the one under way when it brings what they need. */
  private fetch(): Promise<void> {
    const interest = this.interest();
    const current = this.inflight;
    if (current && RANK[current.interest] >= RANK[interest]) {
      return current.done;
    }
    const before = current ? current.done.catch(() => undefined) : Promise.resolve();
    const done = before.then(() => this.fetchNow(interest));
    const entry = { interest, done };
    this.inflight = entry;
    const clear = () => {
      if (this.inflight === entry) {
        this.inflight = null;
      }
    };
    done.then(clear, clear);
    return done;
  }

  private async fetchNow(interest: Interest): Promise<void> {
    if (this._disposed || interest === 'none') {
      return;
    }
    const all = interest === 'all';
    const [allocations, pool, klass] = await Promise.allSettled([
      this.source.allocations(),
      all ? this.source.pool() : Promise.resolve(null),
      all ? this.source.classKernels() : Promise.resolve(null)
    ]);
    if (this._disposed) {
      return;
    }
    this._allocations = allocations;
    if (all) {
      this._pool = pool as PromiseSettledResult<IPool>;
      this._class = klass as PromiseSettledResult<IClass>;
    }
    this._changed.emit();
    if (allocations.status === 'rejected') {
      throw allocations.reason; // the poll backs off
    }
  }
}

function hidden(): boolean {
  return typeof document !== 'undefined' && document.visibilityState === 'hidden';
}
