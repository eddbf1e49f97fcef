// One model, one poll: the status bar and the sidebar share each fetch.
import { Signal } from '@lumino/signaling';
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { IAllocation, IClass, IPool, IQueueEntry } from '../src/api';
import { IQueueLeft, VGPUModel } from '../src/model';
import { allocation } from './allocation';

function fakeSource() {
  const calls = { allocations: 0, pool: 0, classKernels: 0 };
  let fail = false;
  const source = {
    calls,
    fail: (value: boolean) => (fail = value),
    allocations: vi.fn(async () => {
      calls.allocations++;
      await new Promise(resolve => setTimeout(resolve, 5));
      if (fail) {
        throw new Error('allocations: 500 Internal Server Error');
      }
      return [allocation('k1', { memory_used: 1288490189 })];
    }),
    pool: vi.fn(async (): Promise<IPool> => {
      calls.pool++;
      return { source: 'local', visible: true, nodes: [], totals: {}, count_resource: 'vgpu' };
    }),
    classKernels: vi.fn(async (): Promise<IClass> => {
      calls.classKernels++;
      return { kernels: [], instructor: false };
    })
  };
  return source;
}

let model: VGPUModel | null = null;
afterEach(() => {
  model?.dispose();
  model = null;
});

describe('VGPUModel', () => {
  it('asks nothing while no view needs anything', async () => {
    const source = fakeSource();
    model = new VGPUModel(source, { refreshInterval: 20 });
    await new Promise(resolve => setTimeout(resolve, 80));
    await model.refresh();
    expect(source.calls).toEqual({ allocations: 0, pool: 0, classKernels: 0 });
  });

  it('shares one fetch between the status bar and the sidebar', async () => {
    const source = fakeSource();
    model = new VGPUModel(source, { refreshInterval: 60_000 });
    model.addInterest(() => 'allocations'); // the status bar
    model.addInterest(() => 'all'); // the sidebar, shown
    let changes = 0;
    model.changed.connect(() => changes++);
    await Promise.all([model.refresh(), model.refresh(), model.refresh()]);
    expect(source.calls).toEqual({ allocations: 1, pool: 1, classKernels: 1 });
    expect(changes).toBe(1);
    expect(model.allocation('k1')?.memory_used).toBe(1288490189);
    expect(model.allocation('k2')).toBeNull();
    expect(model.pool?.status).toBe('fulfilled');
  });

  it('fetches the pool and the class only for a view that shows them', async () => {
    const source = fakeSource();
    model = new VGPUModel(source, { refreshInterval: 60_000 });
    let panelShown = false;
    model.addInterest(() => 'allocations');
    model.addInterest(() => (panelShown ? 'all' : 'none'));
    await model.refresh();
    expect(source.calls).toEqual({ allocations: 1, pool: 0, classKernels: 0 });
    expect(model.pool).toBeNull();
    panelShown = true;
    await model.refresh();
    expect(source.calls).toEqual({ allocations: 2, pool: 1, classKernels: 1 });
  });

  it('polls at the refresh interval, which a setting changes', async () => {
    const source = fakeSource();
    model = new VGPUModel(source, { refreshInterval: 60_000 });
    model.addInterest(() => 'allocations');
    await model.refresh();
    expect(source.calls.allocations).toBe(1);
    model.refreshInterval = 25;
    await vi.waitFor(() => expect(source.calls.allocations).toBeGreaterThanOrEqual(3), {
      timeout: 2000
    });
  });

  it('keeps the error for the views, and stops when the interest goes', async () => {
    const source = fakeSource();
    model = new VGPUModel(source, { refreshInterval: 60_000 });
    const interest = model.addInterest(() => 'allocations');
    source.fail(true);
    await model.refresh();
    expect(model.allocations?.status).toBe('rejected');
    expect(model.allocation('k1')).toBeNull();
    interest.dispose();
    model.refreshInterval = 10;
    const before = source.calls.allocations;
    await new Promise(resolve => setTimeout(resolve, 60));
    expect(source.calls.allocations).toBe(before);
  });

  it('refreshes when kernels start or stop', async () => {
    const source = fakeSource();
    const kernels = { runningChanged: new Signal<unknown, unknown>({}) };
    model = new VGPUModel(source, { refreshInterval: 60_000, kernels });
    model.addInterest(() => 'allocations');
    await model.refresh();
    kernels.runningChanged.emit([{ id: 'k1', execution_state: 'idle' }]);
    await vi.waitFor(() => expect(source.calls.allocations).toBe(2));
    // the same kernels, one of them busy now: nothing to fetch
    kernels.runningChanged.emit([{ id: 'k1', execution_state: 'busy' }]);
    await new Promise(resolve => setTimeout(resolve, 30));
    expect(source.calls.allocations).toBe(2);
    kernels.runningChanged.emit([]);
    await vi.waitFor(() => expect(source.calls.allocations).toBe(3));
  });
});

function entry(kernel_id: string, position: number, extra: Partial<IQueueEntry> = {}): IQueueEntry {
  return {
    kernel_id,
    position,
    ahead: position - 1,
    estimate_seconds: 60 * position,
    since: Date.now() / 1000 - 30,
    course: 'ai101',
    vgpus: 1,
    memory: '4Gi',
    kernel_spec_name: 'orion-1x4gi',
    path: 'labs/mnist.ipynb',
    ...extra
  };
}

/** A server with a queue: `waiting` and `running` are what it answers now. */
function queueSource() {
  const state = { waiting: [] as IQueueEntry[], running: [] as string[], queueFails: false };
  const calls = { allocations: 0, queue: 0, pool: 0, classKernels: 0 };
  return {
    state,
    calls,
    allocations: vi.fn(async () => {
      calls.allocations++;
      return state.running.map(id => allocation(id));
    }),
    pool: vi.fn(async (): Promise<IPool> => {
      calls.pool++;
      return { source: 'local', visible: true, nodes: [], totals: {}, count_resource: 'vgpu' };
    }),
    classKernels: vi.fn(async (): Promise<IClass> => {
      calls.classKernels++;
      return { kernels: [], instructor: false };
    }),
    queue: vi.fn(async () => {
      calls.queue++;
      if (state.queueFails) {
        throw new Error('queue: 404 Not Found');
      }
      return state.waiting.map(w => ({ ...w }));
    })
  };
}

describe('VGPUModel and the queue', () => {
  it('asks for the queue once at start-up, with no view, and not again while nothing waits', async () => {
    const source = queueSource();
    model = new VGPUModel(source, { refreshInterval: 20 });
    await vi.waitFor(() => expect(source.calls.queue).toBe(1));
    await new Promise(resolve => setTimeout(resolve, 100));
    expect(source.calls).toEqual({ allocations: 0, queue: 1, pool: 0, classKernels: 0 });
    expect(model.queue?.status).toBe('fulfilled');
    expect(model.waiting).toEqual([]);
    // a view's refresh does not ask for it either
    model.addInterest(() => 'allocations');
    await model.refresh();
    expect(source.calls.queue).toBe(1);
    expect(source.calls.allocations).toBeGreaterThanOrEqual(1);
  });

  it('polls the queue while a launch waits (a reload finds it), and stops once nothing does', async () => {
    const source = queueSource();
    source.state.waiting = [entry('k1', 3)];
    model = new VGPUModel(source, { refreshInterval: 20 });
    await vi.waitFor(() => expect(model?.waiting.map(w => w.position)).toEqual([3]));
    source.state.waiting = [entry('k1', 2)];
    await vi.waitFor(() => expect(model?.waiting.map(w => w.position)).toEqual([2]));
    model.ownLaunch('k1'); // (so that its leaving is not announced here)
    source.state.waiting = [];
    await vi.waitFor(() => expect(model?.waiting).toEqual([]));
    const asked = source.calls.queue;
    await new Promise(resolve => setTimeout(resolve, 100));
    expect(source.calls.queue).toBe(asked);
    // no view wanted allocations, and no launch left that this page did not start
    expect(source.calls.allocations).toBe(0);
  });

  it('asks again when a launch of this page is queued', async () => {
    const source = queueSource();
    model = new VGPUModel(source, { refreshInterval: 60_000 });
    await vi.waitFor(() => expect(source.calls.queue).toBe(1));
    model.ownLaunch('mine');
    source.state.waiting = [entry('mine', 2)];
    await model.refreshQueue();
    expect(source.calls.queue).toBe(2);
    expect(model.waiting.map(w => w.kernel_id)).toEqual(['mine']);
  });

  it('announces a launch from before a reload once its kernel runs, and never its own', async () => {
    const source = queueSource();
    source.state.waiting = [entry('old', 1), entry('mine', 2, { course: 'ml202' })];
    model = new VGPUModel(source, { refreshInterval: 20 });
    const left: IQueueLeft[] = [];
    model.queueLeft.connect((_, l) => left.push(l));
    model.ownLaunch('mine');
    await vi.waitFor(() => expect(model?.waiting.length).toBe(2));
    // both leave the queue; "old" is still starting (no allocation yet)
    source.state.waiting = [];
    await vi.waitFor(() => expect(model?.waiting).toEqual([]));
    await vi.waitFor(() => expect(source.calls.allocations).toBeGreaterThanOrEqual(1));
    expect(left).toEqual([]);
    // its kernel runs (and so does this page's own)
    source.state.running = ['old', 'mine'];
    await vi.waitFor(() => expect(left.length).toBe(1));
    expect(left[0].entry.kernel_id).toBe('old');
    expect(left[0].entry.path).toBe('labs/mnist.ipynb');
    expect(left[0].allocation.kernel_id).toBe('old');
    // announced once; then the polling stops
    await new Promise(resolve => setTimeout(resolve, 80));
    const asked = { ...source.calls };
    await new Promise(resolve => setTimeout(resolve, 80));
    expect(left.length).toBe(1);
    expect(source.calls).toEqual(asked);
  });

  it('stops asking a server without a queue', async () => {
    const source = queueSource();
    source.state.queueFails = true;
    model = new VGPUModel(source, { refreshInterval: 20 });
    await vi.waitFor(() => expect(model?.queue?.status).toBe('rejected'));
    await new Promise(resolve => setTimeout(resolve, 100));
    expect(source.calls.queue).toBe(1);
    expect(model.waiting).toEqual([]);
  });
});
