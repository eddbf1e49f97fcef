// One model of what the server says about vGPUs, polled once for the whole page: the status bar,
// the sidebar and the "New vGPU notebook" dialog read it, and ask it to refresh after a change.
// This user's launches waiting in the queue are asked for at start-up (a launch may wait across a
// page reload) and then only while one waits. This user's parked kernels (snapshots) come with
// each fetch of the allocations: a notebook whose kernel was parked shows "parked · Resume".
import { Token } from '@lumino/coreutils';
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import type { IAllocation, IBudget, IClass, IPool, IQueueEntry, ISnapshot } from './api';

/** What a view needs now: nothing, this server's allocations, or also the pool and the class. */
export type Interest = 'none' | 'allocations' | 'all';

/** Where the model gets its data (the REST API; a fake in the unit tests). */
export interface IVGPUSource {
  allocations(): Promise<IAllocation[]>;
  pool(): Promise<IPool>;
  classKernels(): Promise<IClass>;
  /** This user's waiting launches (GET queue); a source without it has no queue. */
  queue?(): Promise<IQueueEntry[]>;
  /** This user's parked kernels (GET snapshots); a source without it parks nothing. */
  snapshots?(): Promise<ISnapshot[]>;
  /** This user's vGPU-hour budget (GET budget); a source without it has none. */
  budget?(): Promise<IBudget>;
}

/** A launch that left the queue and that no flow of this page waits for (one from before a reload). */
export interface IQueueLeft {
  entry: IQueueEntry;
  /** The kernel it started. */
  allocation: IAllocation;
}

/** How long a launch that left the queue is looked for among the allocations (its kernel starting). */
export const LEFT_QUEUE_WATCH_MS = 5 * 60_000;

/** A part of the model: null until first fetched, then the last answer or the last error. */
export type Part<T> = PromiseSettledResult<T> | null;

export interface IVGPUModel extends IDisposable {
  /** Emitted after every fetch (whatever it brought: views also show how long ago things were). */
  readonly changed: ISignal<IVGPUModel, void>;
  readonly allocations: Part<IAllocation[]>;
  readonly pool: Part<IPool>;
  readonly classKernels: Part<IClass>;
  /** This user's waiting launches, as last fetched (null before the first fetch). */
  readonly queue: Part<IQueueEntry[]>;
  /** The waiting launches ([] when none or not known). */
  readonly waiting: IQueueEntry[];
  /** A launch this page did not start itself left the queue, and its kernel runs. */
  readonly queueLeft: ISignal<IVGPUModel, IQueueLeft>;
  /** This server's allocation of a kernel, when the last fetch had it. */
  allocation(kernelId: string): IAllocation | null;
  /** This user's parked kernels, as last fetched with the allocations (an error: none kept here). */
  readonly snapshots: Part<ISnapshot[]>;
  /** Whether this server keeps snapshots (its last GET snapshots answered): Park is offered then. */
  readonly canPark: boolean;
  /** The newest readable snapshot of the notebook at `path` (the server's path), or null. */
  parkedFor(path: string | null | undefined): ISnapshot | null;
  /** This user's vGPU-hour budget as last fetched (null before the first fetch). */
  readonly budget: Part<IBudget>;
  /** How often the budget is fetched, in ms (setting budgetRefreshInterval). */
  budgetInterval: number;
  /** Poll interval in ms (setting refreshInterval); errors back off up to 6 times it. */
  refreshInterval: number;
  /** The dialog's memory slider maximum, in MiB (setting sliderMaxMemory). */
  sliderMaxMib: number;
  /** Fetch now (what the views want), sharing a fetch already under way. */
  refresh(): Promise<void>;
  /** A view says what it needs; the poll stands by while nobody needs anything. */
  addInterest(interest: () => Interest): IDisposable;
  /** A launch of this page (it opens its own notebook): never announced by queueLeft. */
  ownLaunch(kernelId: string): void;
  /** Fetch the queue now (a launch of this page was queued), and while something waits. */
  refreshQueue(): Promise<void>;
}

export const IVGPUModel = new Token<IVGPUModel>(
  '@orion-jupyter/labextension:IVGPUModel',
  'The vGPU allocations, pool and class, polled once for the status bar, the sidebar and the dialog.'
);

export const DEFAULT_REFRESH_MS = 5_000;
export const DEFAULT_BUDGET_REFRESH_MS = 30_000;
export const DEFAULT_SLIDER_MAX_MIB = 32 * 1024;

const RANK: Record<Interest, number> = { none: 0, allocations: 1, all: 2 };
/** Own launch ids remembered (a page starts a few). */
const MAX_OWN = 200;

export class VGPUModel implements IVGPUModel {
  private readonly poll: Poll;
  private readonly interests = new Set<() => Interest>();
  private readonly _changed = new Signal<IVGPUModel, void>(this);
  private _allocations: Part<IAllocation[]> = null;
  private _pool: Part<IPool> = null;
  private _class: Part<IClass> = null;
  private _queue: Part<IQueueEntry[]> = null;
  private _snapshots: Part<ISnapshot[]> = null;
  /** GET snapshots answered 404 or 501 (an older server, a backend without snapshots): not asked again. */
  private noSnapshots = false;
  private readonly _queueLeft = new Signal<IVGPUModel, IQueueLeft>(this);
  private queueAsked = false;
  private readonly own = new Set<string>();
  /** Launches gone from the queue, not started by this page, until their kernel shows (or time is up). */
  private readonly leaving = new Map<string, { entry: IQueueEntry; until: number }>();
  private inflight: {
    interest: Interest;
    queue: boolean;
    budget: boolean;
    done: Promise<void>;
  } | null = null;
  private _refreshInterval: number;
  private _disposed = false;
  private readonly kernels?: { runningChanged: ISignal<unknown, unknown> };
  private kernelIds: string | null = null;
  sliderMaxMib = DEFAULT_SLIDER_MAX_MIB;
  // -- the budget: asked at start-up, then every budgetInterval (whatever the views need), never
  // again once the server says none applies (or knows no budgets: 404).
  private _budget: Part<IBudget> = null;
  private budgetAt = 0;
  private noBudget = false;
  budgetInterval = DEFAULT_BUDGET_REFRESH_MS;

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
      standby: () =>
        hidden() || (this.interest() === 'none' && !this.wantsQueue() && !this.wantsBudget()),
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

  get queue(): Part<IQueueEntry[]> {
    return this._queue;
  }

  get waiting(): IQueueEntry[] {
    const q = this._queue;
    return q?.status === 'fulfilled' ? q.value : [];
  }

  get queueLeft(): ISignal<IVGPUModel, IQueueLeft> {
    return this._queueLeft;
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

  get snapshots(): Part<ISnapshot[]> {
    return this._snapshots;
  }

  get budget(): Part<IBudget> {
    return this._budget;
  }

  get canPark(): boolean {
    return this._snapshots?.status === 'fulfilled';
  }

  parkedFor(path: string | null | undefined): ISnapshot | null {
    const part = this._snapshots;
    if (!path || part?.status !== 'fulfilled') {
      return null;
    }
    let newest: ISnapshot | null = null;
    for (const s of part.value) {
      // (ids begin with the UTC time of the park, so they order as `created` does)
      if (s.path === path && !s.error && (!newest || s.id > newest.id)) {
        newest = s;
      }
    }
    return newest;
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

  ownLaunch(kernelId: string): void {
    this.own.add(kernelId);
    if (this.own.size > MAX_OWN) {
      this.own.delete(this.own.values().next().value as string);
    }
  }

  refreshQueue(): Promise<void> {
    this.queueAsked = true;
    return this.refresh();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this.kernels?.runningChanged.disconnect(this.kernelsChanged, this);
    this.poll.dispose();
    this.interests.clear();
    this.leaving.clear();
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

  /**
   * The queue is asked for at start-up, when a launch of this page was queued, while something
   * waits, and while a launch that left it is starting: otherwise never.
   */
  private wantsQueue(): boolean {
    return (
      !!this.source.queue &&
      (this._queue === null || this.queueAsked || this.waiting.length > 0 || this.leaving.size > 0)
    );
  }

  private wantsBudget(): boolean {
    return (
      !!this.source.budget &&
      !this.noBudget &&
      (this._budget === null || Date.now() - this.budgetAt >= this.budgetInterval)
    );
  }

  /** Takes the budget's answer; a server without budgets (none applies, or 404) is not asked again. */
  private tookBudget(answer: PromiseSettledResult<IBudget>): void {
    this._budget = answer;
    this.budgetAt = Date.now();
    this.noBudget =
      answer.status === 'fulfilled'
        ? answer.value.budget === null
        : (answer.reason as { status?: number })?.status === 404;
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
    const queue = this.wantsQueue();
    const budget = this.wantsBudget();
    const current = this.inflight;
    if (
      current &&
      RANK[current.interest] >= RANK[interest] &&
      (current.queue || !queue) &&
      (current.budget || !budget)
    ) {
      return current.done;
    }
    const before = current ? current.done.catch(() => undefined) : Promise.resolve();
    const done = before.then(() => this.fetchNow(interest, queue, budget));
    const entry = { interest, queue, budget, done };
    this.inflight = entry;
    const clear = () => {
      if (this.inflight === entry) {
        this.inflight = null;
      }
    };
    done.then(clear, clear);
    return done;
  }

  private async fetchNow(interest: Interest, queue: boolean, budget: boolean): Promise<void> {
    if (this._disposed || (interest === 'none' && !queue && !budget)) {
      return;
    }
    const all = interest === 'all';
    // A launch that left the queue is looked for among the allocations.
    const withAllocations = interest !== 'none' || this.leaving.size > 0;
    if (queue) {
      this.queueAsked = false;
    }
    const snapshots = withAllocations && !!this.source.snapshots && !this.noSnapshots;
    const [allocations, pool, klass, waiting, parked, budgetAnswer] = await Promise.allSettled([
      withAllocations ? this.source.allocations() : Promise.resolve(null),
      all ? this.source.pool() : Promise.resolve(null),
      all ? this.source.classKernels() : Promise.resolve(null),
      queue && this.source.queue ? this.source.queue() : Promise.resolve(null),
      snapshots ? this.source.snapshots!() : Promise.resolve(null),
      budget ? this.source.budget!() : Promise.resolve(null)
    ]);
    if (this._disposed) {
      return;
    }
    let found = withAllocations ? (allocations as PromiseSettledResult<IAllocation[]>) : null;
    if (queue) {
      const left = this.leftQueue(waiting as PromiseSettledResult<IQueueEntry[]>);
      if (left && !found) {
        // gone from the queue: has its kernel started? (no view asked for allocations)
        [found] = await Promise.allSettled([this.source.allocations()]);
        if (this._disposed) {
          return;
        }
      }
    }
    if (found) {
      this._allocations = found;
    }
    if (snapshots) {
      // An error (a server that keeps no snapshots, or an older one) means nothing is parked here.
      this._snapshots = parked as PromiseSettledResult<ISnapshot[]>;
      const status = parked.status === 'rejected' && (parked.reason as { status?: number })?.status;
      this.noSnapshots = status === 404 || status === 501;
    }
    if (budget) {
      this.tookBudget(budgetAnswer as PromiseSettledResult<IBudget>);
    }
    if (all) {
      this._pool = pool as PromiseSettledResult<IPool>;
      this._class = klass as PromiseSettledResult<IClass>;
    }
    this._changed.emit();
    if (found?.status === 'fulfilled') {
      this.announceStarted(found.value);
    }
    if (interest !== 'none' && found?.status === 'rejected') {
      throw found.reason; // the poll backs off
    }
  }

  /** Takes the queue's answer; whether a launch not of this page left it (its kernel is then looked for). */
  private leftQueue(answer: PromiseSettledResult<IQueueEntry[]>): boolean {
    const before = this.waiting;
    this._queue = answer;
    if (answer.status !== 'fulfilled') {
      return false; // an older server without a queue (or an error): nothing waits that we know of
    }
    const now = Date.now();
    const still = new Set(answer.value.map(e => e.kernel_id));
    for (const entry of before) {
      if (!still.has(entry.kernel_id) && !this.own.has(entry.kernel_id)) {
        this.leaving.set(entry.kernel_id, { entry, until: now + LEFT_QUEUE_WATCH_MS });
      }
    }
    for (const [id, { until }] of this.leaving) {
      if (still.has(id) || until < now) {
        this.leaving.delete(id); // back in the queue (it is announced when it leaves), or not started
      }
    }
    return this.leaving.size > 0;
  }

  /** A launch that left the queue and whose kernel now runs is announced, once. */
  private announceStarted(allocations: IAllocation[]): void {
    for (const [id, { entry }] of [...this.leaving]) {
      const allocation = allocations.find(a => a.kernel_id === id);
      if (allocation && !this.own.has(id)) {
        this.leaving.delete(id);
        this.own.add(id);
        this._queueLeft.emit({ entry, allocation });
      } else if (this.own.has(id)) {
        this.leaving.delete(id);
      }
    }
  }
}

function hidden(): boolean {
  return typeof document !== 'undefined' && document.visibilityState === 'hidden';
}
