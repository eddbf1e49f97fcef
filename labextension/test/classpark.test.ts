// The class view's parking: how a student's parked count and a course's park read, and which
// courses get a "Park all of" (pure parts; the buttons' flows run in the browser).
import { describe, expect, it, vi } from 'vitest';

vi.mock('@jupyterlab/apputils', () => ({ Dialog: {}, showDialog: vi.fn(), showErrorMessage: vi.fn() }));

import type { IClassKernel } from '../src/api';
import { classCourses, courseParkReport, formatParkedCount } from '../src/classpark';
import { formatClock } from '../src/format';

function kernel(user: string, course?: string): IClassKernel {
  return {
    pod: `orion-${user}`,
    namespace: 'class',
    user,
    kernel_id: `k-${user}`,
    node: 'gpu-1',
    phase: 'Running',
    reason: '',
    vgpus: 1,
    memory_mib: 4096,
    idle_seconds: 30,
    course
  };
}

describe('class view parking', () => {
  it("counts a student's parked kernels, with when the last was parked", () => {
    const last = '2026-12-07T10:42:05+00:00';
    expect(formatParkedCount({ user: 'ann', snapshots: 2, bytes: 10, last })).toBe(
      `2 parked · last ${formatClock(last)}`
    );
    expect(formatParkedCount({ user: 'ann', snapshots: 1, bytes: 10 })).toBe('1 parked');
    expect(formatParkedCount({ user: 'bob', snapshots: 0, bytes: 0 })).toBeNull();
    expect(formatParkedCount(undefined)).toBeNull();
  });

  it('offers each course of the class once, and none where the server names no course', () => {
    const kernels = [kernel('cy', 'ml202'), kernel('ann', 'ai101'), kernel('bob', 'ai101'), kernel('dee')];
    expect(classCourses(kernels)).toEqual(['ai101', 'ml202']);
    expect(classCourses([kernel('dee')])).toEqual([]);
  });

  it("reports a course's park: how many, and who keeps running and why", () => {
    expect(
      courseParkReport({
        course: 'ai101',
        parked: [{ kernel_id: 'k1', user: 'ann', snapshot: 's1' }],
        not_parked: [
          { kernel_id: 'k2', user: 'bob', reason: 'busy', message: 'kernel k2 is running a cell' }
        ]
      })
    ).toBe("Parked 1 kernel of ai101. bob's kernel keeps running: kernel k2 is running a cell");
    expect(
      courseParkReport({
        course: 'ai101',
        parked: [
          { kernel_id: 'k1', user: 'ann', snapshot: 's1' },
          { kernel_id: 'k3', user: 'cy', snapshot: 's3' }
        ],
        not_parked: []
      })
    ).toBe('Parked 2 kernels of ai101.');
  });
});
