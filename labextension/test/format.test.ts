// The labextension's reading and writing of sizes and allocations, against the table the server's
// tests read too (tests/memory_cases.json): one rule on both sides.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import {
  byWaste,
  formatAllocation,
  formatBytes,
  formatDuration,
  formatMib,
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
