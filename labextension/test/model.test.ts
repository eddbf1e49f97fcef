// One model, one poll: the status bar and the sidebar share each fetch.
import { Signal } from '@lumino/signaling';
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { IAllocation, IClass, IPool } from '../src/api';
import { VGPUModel } from '../src/model';

function allocation(kernel_id: string, extra: Partial<IAllocation> = {}): IAllocation {
  return {
    kernel_id,
    kernel_spec: 'orion-1x2gi',
    path: null,
    user: 'me',
    backend: 'orion',
    cluster: 'local',
    vgpus: 1,
    memory_mib: 3072,
    compute_percent: null,
    pod: null,
    node: 'vm',
    phase: 'Running',
    reason: '',
    started: null,
    last_activity: null,
    execution_state: 'idle',
    ...extra
  };
}

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
