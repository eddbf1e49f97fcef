// Park and resume: how a parked notebook and a park's or resume's outcome read, and the model's
// snapshots (fetched with the allocations; the newest of a notebook's path; none on a server
// that keeps none, which is then not asked again).
import { describe, expect, it, vi } from 'vitest';

import type { IAllocation, ISnapshot } from '../src/api';
import { formatClock, formatParked, formatSize, parkReport, resumeReport } from '../src/format';
import { VGPUModel } from '../src/model';
import { allocation as anAllocation } from './allocation';

describe('park formatting', () => {
  it('writes a snapshot size in KiB below 1 MiB', () => {
    expect(formatSize(12 * 1024)).toBe('12 KiB');
    expect(formatSize(100)).toBe('1 KiB');
    expect(formatSize(3.5 * 1024 * 1024)).toBe('4 MiB');
    expect(formatSize(1.2 * 1024 ** 3)).toBe('1.2 GiB');
    expect(formatSize(null)).toBe('—');
  });

  it('says when a notebook was parked, in local time', () => {
    const created = '2026-12-07T10:42:05+00:00';
    expect(formatParked({ created })).toBe(`parked ${formatClock(created)}`);
    expect(formatParked({ created })).toMatch(/^parked \d\d:\d\d$/);
    expect(formatParked({ created: null })).toBe('parked');
  });

  it('reports a park: what was saved, its size, and what was not, with why', () => {
    expect(parkReport({ saved: ['answer'], not_saved: {}, bytes: 2048 }, 'a.ipynb')).toBe(
      'Parked a.ipynb: 1 variable saved (2 KiB); its vGPU is free.'
    );
    expect(
      parkReport(
        {
          saved: ['np', 'x'],
          not_saved: { f: 'an open file', g: 'a generator' },
          bytes: 5 * 1024 * 1024
        },
        'b.ipynb'
      )
    ).toBe(
      'Parked b.ipynb: 2 variables saved (5 MiB); its vGPU is free.\n' +
        'Not saved: f (an open file); g (a generator)'
    );
  });

  it('reports a resume: what came back, what did not and why, what moved, whether it is kept', () => {
    const whole = resumeReport({ restored: ['np', 'answer'], not_restored: {} }, 'a.ipynb');
    expect(whole).toEqual({ text: 'Resumed a.ipynb: answer, np came back.', complete: true });
    const part = resumeReport(
      {
        restored: ['model'],
        not_restored: { gen: 'a generator', f: 'damaged' },
        moved: { model: 'on cpu: this kernel has no cuda' },
        snapshot_kept: true
      },
      'b.ipynb'
    );
    expect(part.complete).toBe(false);
    expect(part.text.split('\n')).toEqual([
      'Resumed b.ipynb: model came back.',
      'Not restored: f (damaged); gen (a generator)',
      'Moved: model (on cpu: this kernel has no cuda)',
      'The snapshot is kept (vGPU sidebar): resume it again or delete it.'
    ]);
    const many = Object.fromEntries([...'abcdefg'].map(n => [n, 'a thread']));
    expect(resumeReport({ restored: [], not_restored: many }, 'c').text).toBe(
      'Resumed c: no variables came back.\n' +
        'Not restored: a (a thread); b (a thread); c (a thread); d (a thread); e (a thread); and 2 more'
    );
  });
});

const allocation = (kernel_id: string): IAllocation =>
  anAllocation(kernel_id, { path: 'a.ipynb', memory_mib: 2048 });

const snapshot = (id: string, path: string | null, extra: Partial<ISnapshot> = {}): ISnapshot => ({
  id,
  created: '2026-12-07T10:42:05+00:00',
  bytes: 4096,
  spec: 'orion-1x2gi',
  path,
  saved: ['answer'],
  not_saved: {},
  ...extra
});

function source(snapshots: () => Promise<ISnapshot[]>) {
  return {
    allocations: vi.fn(async () => [allocation('k1')]),
    pool: vi.fn(async () => ({
      source: 'local',
      visible: true,
      nodes: [],
      totals: {},
      count_resource: 'vgpu'
    })),
    classKernels: vi.fn(async () => ({ kernels: [], instructor: false })),
    snapshots: vi.fn(snapshots)
  };
}

describe('the model and snapshots', () => {
  it('fetches the snapshots with the allocations, and finds the newest of a notebook', async () => {
    const src = source(async () => [
      snapshot('20261207T101500Z-aaaaaaaa', 'a.ipynb'),
      snapshot('20261207T104205Z-bbbbbbbb', 'a.ipynb'),
      snapshot('20261207T110000Z-cccccccc', 'a.ipynb', { error: 'its manifest is damaged' }),
      snapshot('20261207T120000Z-dddddddd', 'b.ipynb')
    ]);
    const model = new VGPUModel(src, { refreshInterval: 60_000 });
    expect(model.parkedFor('a.ipynb')).toBeNull(); // not fetched yet
    expect(model.canPark).toBe(false);
    const interest = model.addInterest(() => 'allocations');
    await model.refresh();
    expect(src.snapshots).toHaveBeenCalledTimes(1);
    expect(model.canPark).toBe(true);
    // the newest readable one (a damaged one is listed in the sidebar, never resumed from here)
    expect(model.parkedFor('a.ipynb')?.id).toBe('20261207T104205Z-bbbbbbbb');
    expect(model.parkedFor('b.ipynb')?.id).toBe('20261207T120000Z-dddddddd');
    expect(model.parkedFor('c.ipynb')).toBeNull();
    expect(model.parkedFor(null)).toBeNull();
    expect(model.parkedFor('')).toBeNull();
    interest.dispose();
    model.dispose();
  });

  it('asks nothing while no view needs the allocations', async () => {
    const src = source(async () => []);
    const model = new VGPUModel(src, { refreshInterval: 60_000 });
    await model.refresh();
    expect(src.snapshots).not.toHaveBeenCalled();
    model.dispose();
  });

  it('offers no Park where the server keeps no snapshots, and stops asking', async () => {
    const unsupported = Object.assign(new Error('park and resume work with the local backend so far'), {
      status: 501
    });
    const src = source(async () => {
      throw unsupported;
    });
    const model = new VGPUModel(src, { refreshInterval: 60_000 });
    model.addInterest(() => 'allocations');
    await model.refresh();
    expect(model.canPark).toBe(false);
    expect(model.snapshots?.status).toBe('rejected');
    expect(model.allocation('k1')).not.toBeNull(); // the allocations are not hurt
    await model.refresh();
    expect(src.snapshots).toHaveBeenCalledTimes(1);
    model.dispose();
  });

  it('asks again after another error (the server may be restarting)', async () => {
    let fail = true;
    const src = source(async () => {
      if (fail) {
        throw Object.assign(new Error('snapshots: 500'), { status: 500 });
      }
      return [snapshot('20261207T104205Z-bbbbbbbb', 'a.ipynb')];
    });
    const model = new VGPUModel(src, { refreshInterval: 60_000 });
    model.addInterest(() => 'allocations');
    await model.refresh();
    expect(model.canPark).toBe(false);
    fail = false;
    await model.refresh();
    expect(model.canPark).toBe(true);
    expect(model.parkedFor('a.ipynb')?.id).toBe('20261207T104205Z-bbbbbbbb');
    model.dispose();
  });
});
