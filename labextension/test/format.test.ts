// The labextension's reading and writing of sizes and allocations, against the table the server's
// tests read too (tests/memory_cases.json): one rule on both sides.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import {
  byWaste,
  cullNotice,
  formatAllocation,
  formatBytes,
  formatClock,
  formatDuration,
  formatMib,
  formatOrdinal,
  formatQueueStatus,
  formatQueued,
  formatShort,
  grantedBytes,
  memoryQuantity,
  parseMemory,
  readMemory,
  secondsSince,
  wasteBytes
} from '../src/format';
import { readCount } from '../src/validate';

interface IRow {
  input: string | number;
  mib?: number;
  count?: number;
  error?: string;
}

const cases = JSON.parse(
  readFileSync(
    fileURLToPath(new URL('../../tests/memory_cases.json', import.meta.url)),
    'utf8'
  )
) as {
  parse_memory: IRow[];
  parse_count: IRow[];
  format_mib: { mib: number; text: string }[];
  format_allocation: {
    vgpus: number | null;
    memory_mib: number | null;
    compute_percent: number | null;
    text: string;
  }[];
};

describe('readMemory (vgpu.parse_memory)', () => {
  it.each(cases.parse_memory.map(row => [JSON.stringify(row.input), row]))(
    '%s',
    (_, row) => {
      const reading = readMemory(row.input);
      if (row.error !== undefined) {
        expect(reading).toEqual({ error: row.error });
      } else {
        expect(reading).toEqual({ mib: row.mib });
      }
    }
  );

  it('reads "4G" as decimal and "4Gi" as binary', () => {
    expect(parseMemory('4G')).toBe(3814);
    expect(parseMemory('4Gi')).toBe(4096);
    expect(parseMemory('4096')).toBe(4096);
    expect(parseMemory('4 GB?')).toBeNull();
  });

  it('writes what it reads back', () => {
    for (const mib of [512, 1536, 2048, 3072, 3814, 65536]) {
      expect(parseMemory(memoryQuantity(mib))).toBe(mib);
    }
    expect(memoryQuantity(3072)).toBe('3Gi');
    expect(memoryQuantity(1536)).toBe('1536Mi');
  });
});

describe('readCount (vgpu.parse_count)', () => {
  it.each(cases.parse_count.map(row => [JSON.stringify(row.input), row]))(
    '%s',
    (_, row) => {
      const reading = readCount(row.input);
      if (row.error !== undefined) {
        expect(reading).toEqual({ error: row.error });
      } else {
        expect(reading).toEqual({ count: row.count });
      }
    }
  );
});

describe('formatMib (vgpu.format_mib)', () => {
  it.each(cases.format_mib.map(row => [row.mib, row.text]))(
    '%s MiB → %s',
    (mib, text) => {
      expect(formatMib(mib)).toBe(text);
    }
  );

  it('writes an unknown size as a dash', () => {
    expect(formatMib(null)).toBe('—');
  });
});

describe('formatAllocation (vgpu.format_allocation)', () => {
  it.each(cases.format_allocation.map(row => [row.text, row]))('%s', (text, row) => {
    expect(formatAllocation(row.vgpus, row.memory_mib, row.compute_percent)).toBe(text);
  });

  it('has the labels of the issue', () => {
    expect(formatAllocation(1, 4096)).toBe('1 vGPU · 4 GiB');
    expect(formatAllocation(2, 8192)).toBe('2 vGPUs × 8 GiB');
    expect(formatAllocation(0, 0)).toBe('CPU only');
  });

  it('goes through the translation bundle', () => {
    const calls: string[] = [];
    const trans = {
      __: (msg: string, ...args: unknown[]) => (calls.push(msg), `«${msg}|${args.join('|')}»`),
      _n: (one: string, many: string, n: number, ...args: unknown[]) => (
        calls.push(n === 1 ? one : many), `«${n}|${args.join('|')}»`
      )
    } as any;
    expect(formatAllocation(2, 8192, null, trans)).toBe('«2|8 GiB»');
    expect(formatAllocation(0, 0, null, trans)).toBe('«CPU only|»');
    expect(calls).toEqual(['%1 vGPUs × %2', 'CPU only']);
  });
});

describe('the status bar and the sidebar', () => {
  it('writes the short allocation', () => {
    expect(formatShort(1, 3072)).toBe('1 × 3 GiB');
    expect(formatShort(2, 4096)).toBe('2 × 4 GiB');
    expect(formatShort(0, 0)).toBe('CPU only');
  });

  it('writes memory in use to one decimal', () => {
    expect(formatBytes(1.2 * 1024 ** 3)).toBe('1.2 GiB');
    expect(formatBytes(4 * 1024 ** 3)).toBe('4 GiB');
    expect(formatBytes(50 * 1024 ** 2)).toBe('50 MiB');
    expect(formatBytes(0)).toBe('0 MiB');
  });

  it('writes durations', () => {
    expect(formatDuration(42)).toBe('42 s');
    expect(formatDuration(390)).toBe('7 min');
    expect(formatDuration(7200)).toBe('2.0 h');
    expect(formatDuration(null)).toBe('—');
  });

  it('reads the server time stamps', () => {
    const now = Date.parse('2026-01-02T03:05:05.678Z');
    expect(secondsSince('2026-01-02 03:04:05.678901+00:00', now)).toBeCloseTo(60);
    expect(secondsSince('2026-01-02T03:04:05Z', now)).toBeCloseTo(60.678);
    expect(secondsSince(null, now)).toBeNull();
    expect(secondsSince('yesterday', now)).toBeNull();
  });
});

describe('the class table by waste', () => {
  const GiB = 1024 ** 3;
  const row = (
    user: string,
    vgpus: number,
    memory_mib: number,
    memory_used: number | null | undefined,
    idle_seconds: number | null = null
  ) => ({ user, vgpus, memory_mib, memory_used, idle_seconds });

  it('is granted minus used', () => {
    expect(wasteBytes(row('a', 2, 4096, 1 * GiB))).toBe(7 * GiB);
    expect(wasteBytes(row('a', 1, 4096, 5 * GiB))).toBe(0);
    expect(wasteBytes(row('a', 1, 4096, null))).toBeNull();
    expect(wasteBytes(row('a', 1, 4096, undefined))).toBeNull();
  });

  it('sorts most waste first, then the longest idle; nothing or unknown wasted last', () => {
    const rows = [
      row('busy', 1, 4096, 3.5 * GiB, 10),
      row('unknown-small', 1, 2048, null, 9000),
      row('idle-big', 2, 8192, 0.5 * GiB, 60),
      row('same-waste-long-idle', 1, 4096, 3.5 * GiB, 600),
      row('unknown-big', 2, 4096, undefined, 5),
      row('full', 1, 1024, 2 * GiB, 100),
      row('cpu', 0, 0, 0, 0)
    ];
    expect(rows.sort(byWaste).map(r => r.user)).toEqual([
      'idle-big',
      'same-waste-long-idle',
      'busy',
      'unknown-small',
      'full',
      'unknown-big',
      'cpu'
    ]);
  });

  it("takes the server's waste_bytes and memory_granted when it sends them", () => {
    expect(wasteBytes({ vgpus: 1, memory_mib: 4096, memory_used: 0, waste_bytes: 5 })).toBe(5);
    expect(wasteBytes({ vgpus: 1, memory_mib: 4096, memory_used: 0, waste_bytes: null })).toBeNull();
    expect(grantedBytes({ vgpus: 1, memory_mib: 4096, memory_granted: 7 })).toBe(7);
  });
});

describe('idle kernels about to be stopped', () => {
  // A local time of day, whatever the time zone the tests run in.
  const at = (hours: number, minutes: number) => new Date(2026, 0, 2, hours, minutes, 30).toISOString();

  it('writes the cull time as the local HH:MM', () => {
    expect(formatClock(at(10, 42))).toBe('10:42');
    expect(formatClock(at(9, 5))).toBe('09:05');
    expect(formatClock(at(0, 0))).toBe('00:00');
    // the server's form: milliseconds and Z
    const stamp = new Date(2026, 0, 2, 23, 59).toISOString().replace(/\.\d+Z$/, '.123Z');
    expect(formatClock(stamp)).toBe('23:59');
    expect(formatClock(null)).toBeNull();
    expect(formatClock('soon')).toBeNull();
  });

  it('says "idle: stops at 10:42" with Keep during the warning', () => {
    const notice = cullNotice({ cull_at: at(10, 42), cull_warning: true, keeps_left: 2 });
    expect(notice).toEqual({
      text: 'idle: stops at 10:42',
      canKeep: true,
      noKeeps: null,
      title: 'Idle: this kernel is stopped at 10:42 to free its vGPU unless kept (2 keeps left).'
    });
    expect(cullNotice({ cull_at: at(10, 42), cull_warning: true, keeps_left: 1 })?.title).toBe(
      'Idle: this kernel is stopped at 10:42 to free its vGPU unless kept (1 keep left).'
    );
    // a server that does not count keeps: Keep is offered
    expect(cullNotice({ cull_at: at(10, 42), cull_warning: true })?.canKeep).toBe(true);
  });

  it('says "idle: parks at 10:42" where idle culling parks the kernel', () => {
    const notice = cullNotice({
      cull_at: at(10, 42),
      cull_warning: true,
      keeps_left: 1,
      cull_parks: true
    });
    expect(notice?.text).toBe('idle: parks at 10:42');
    expect(notice?.canKeep).toBe(true);
    expect(notice?.title).toBe(
      'Idle: this kernel is stopped at 10:42 to free its vGPU unless kept (1 keep left). ' +
        'Parked, not lost: its variables are saved first, and Resume brings them back.'
    );
    expect(
      cullNotice({ cull_at: at(10, 42), cull_warning: true, keeps_left: 0, cull_parks: true })?.text
    ).toBe('idle: parks at 10:42');
  });

  it('says that no keeps are left after the last one', () => {
    const notice = cullNotice({ cull_at: at(10, 42), cull_warning: true, keeps_left: 0 });
    expect(notice?.text).toBe('idle: stops at 10:42');
    expect(notice?.canKeep).toBe(false);
    expect(notice?.noKeeps).toBe('no keeps left');
    expect(notice?.title).toContain('No keeps are left');
  });

  it('says nothing before the warning, for a busy or exempt kernel, or for an older server', () => {
    expect(cullNotice({ cull_at: at(10, 42), cull_warning: false, keeps_left: 3 })).toBeNull();
    expect(cullNotice({ cull_at: null, cull_warning: false, keeps_left: 3 })).toBeNull();
    expect(cullNotice({ cull_at: null, cull_warning: true })).toBeNull();
    expect(cullNotice({})).toBeNull();
  });
});

describe('the queue', () => {
  it('writes places in line', () => {
    const places = [1, 2, 3, 4, 10, 11, 12, 13, 14, 21, 22, 23, 101, 111, 112, 113, 122];
    expect(places.map(n => formatOrdinal(n))).toEqual([
      '1st', '2nd', '3rd', '4th', '10th', '11th', '12th', '13th', '14th', '21st', '22nd', '23rd',
      '101st', '111th', '112th', '113th', '122nd'
    ]);
  });

  it('says the place and the estimate', () => {
    expect(formatQueued({ position: 3, estimate_seconds: 120 })).toBe(
      'Waiting for a vGPU: 3rd in line, about 2 min'
    );
    expect(formatQueued({ position: 2, estimate_seconds: 42 })).toBe(
      'Waiting for a vGPU: 2nd in line, about 42 s'
    );
    expect(formatQueued({ position: 1, estimate_seconds: null })).toBe(
      'Waiting for a vGPU: 1st in line'
    );
    expect(formatQueued({ position: 1, estimate_seconds: NaN })).toBe(
      'Waiting for a vGPU: 1st in line'
    );
  });

  it('writes the status bar item, best place first', () => {
    expect(formatQueueStatus([{ position: 3 }])).toBe('vGPU queue: 3rd');
    expect(formatQueueStatus([{ position: 5 }, { position: 1 }])).toBe('vGPU queue: 1st, 5th');
  });

  it('goes through the translation bundle', () => {
    const calls: string[] = [];
    const trans = {
      __: (msg: string, ...args: unknown[]) => (
        calls.push(msg), msg.replace(/%(\d)/g, (_, i) => String(args[Number(i) - 1]))
      ),
      _n: () => ''
    } as any;
    expect(formatQueued({ position: 2, estimate_seconds: 60 }, trans)).toBe(
      'Waiting for a vGPU: 2nd in line, about 1 min'
    );
    expect(calls).toEqual(['%1nd', '%1 min', 'Waiting for a vGPU: %1 in line, about %2']);
  });
});
