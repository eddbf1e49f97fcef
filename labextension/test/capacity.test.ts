// The dialog's word on a full pool: nothing can start (Start disabled, with the server's reason and
// what to do), or in hub mode (the broker decides at launch) that a launch waits in the queue.
import { nullTranslator } from '@jupyterlab/translation';
import { describe, expect, it } from 'vitest';

import { IPool, ISpec } from '../src/api';
import { nothingCanStart, queueNote } from '../src/validate';

const trans = nullTranslator.load('orion_jupyter');
const spec = (name: string, can_start: boolean | null, why_not?: string): ISpec => ({
  name,
  display_name: name,
  can_start,
  why_not
});
const pool = (free: number, allocatable = 4): IPool => ({
  source: 'broker',
  visible: true,
  nodes: [],
  count_resource: 'vgpu',
  totals: { vgpu: { allocatable, allocated: allocatable - free, free } }
});

describe('nothingCanStart', () => {
  it('gives the server\'s reason (with its advice), or the advice, when every spec is refused', () => {
    const text = nothingCanStart(
      [spec('a', false, 'no vGPU free: 4 of 4 in use'), spec('b', false)],
      trans
    );
    expect(text).toBe('No vGPU kernel can start now. no vGPU free: 4 of 4 in use');
    expect(nothingCanStart([spec('a', false)], trans)).toBe(
      'No vGPU kernel can start now. Stop a vGPU kernel you no longer use (the vGPU sidebar), or try again when one is free.'
    );
  });

  it('says nothing while one spec can start, or the server cannot tell (hub mode)', () => {
    expect(nothingCanStart([spec('a', false, 'full'), spec('b', true)], trans)).toBe('');
    expect(nothingCanStart([spec('a', null)], trans)).toBe('');
    expect(nothingCanStart([], trans)).toBe('');
  });

  it('counts a broken spec as one that cannot start', () => {
    const broken = { ...spec('a', false), error: 'bad memory "x"' };
    expect(nothingCanStart([broken], trans)).toBe('No vGPU kernel can start now. bad memory "x"');
  });
});

describe('queueNote', () => {
  it('offers the queue in hub mode when no vGPU is free', () => {
    expect(queueNote([spec('a', null)], pool(0), trans)).toBe(
      'No vGPU is free now (4 of 4 in use): a launch waits in the queue for one, with its place shown, and you may cancel it while it waits.'
    );
  });

  it('says nothing with a vGPU free, a pool not shown, or specs the server judged', () => {
    expect(queueNote([spec('a', null)], pool(1), trans)).toBe('');
    expect(queueNote([spec('a', null)], null, trans)).toBe('');
    expect(queueNote([spec('a', null)], { ...pool(0), visible: false }, trans)).toBe('');
    expect(queueNote([spec('a', false)], pool(0), trans)).toBe('');
  });
});
