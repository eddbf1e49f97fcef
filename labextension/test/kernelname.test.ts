// A notebook's kernel named by its real grant (kernelname.ts): the spec's name when the server
// granted what the spec says, its grant replaced when not; phrases kept whole as the server keeps
// them in spec names (tests/memory_cases.json, read by the Python tests too).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { grantedName, specGrant, unbrokenPhrases } from '../src/kernelname';
import { allocation } from './allocation';

const cases: { unbroken_phrases: { text: string; unbroken: string }[] } = JSON.parse(
  readFileSync(fileURLToPath(new URL('../../tests/memory_cases.json', import.meta.url)), 'utf-8')
);

const NB = '\u00a0';
const SPEC_1X4GI = `Python${NB}3 · 1${NB}vGPU · 4${NB}GiB`;
const GRANT_1X4GI = { vgpus: 1, memory_mib: 4096, compute_percent: null };

const granted = (vgpus: number | null, memoryMib: number | null, compute: number | null = null) =>
  allocation('k1', { vgpus, memory_mib: memoryMib, compute_percent: compute });

describe('unbrokenPhrases (vgpu.unbroken_phrases)', () => {
  it.each(cases.unbroken_phrases.map(row => [row.text, row]))('%s', (_, row) => {
    expect(unbrokenPhrases(row.text)).toBe(row.unbroken);
  });
});

describe('specGrant', () => {
  it("reads a vGPU spec's metadata, and nothing from another spec's", () => {
    const metadata = {
      orion_jupyter: { description: '', vgpus: 1, memory_mib: 4096, compute_percent: null }
    };
    expect(specGrant(metadata)).toEqual(GRANT_1X4GI);
    expect(specGrant({ debugger: true })).toBeNull();
    expect(specGrant(undefined)).toBeNull();
    expect(specGrant({ orion_jupyter: { vgpus: '1', memory_mib: 4096 } })).toBeNull();
  });
});

describe('grantedName', () => {
  it("keeps the spec's name when the grant is the spec's, or not known yet", () => {
    expect(grantedName(SPEC_1X4GI, GRANT_1X4GI, granted(1, 4096))).toBe(SPEC_1X4GI);
    expect(grantedName(SPEC_1X4GI, GRANT_1X4GI, null)).toBe(SPEC_1X4GI);
    expect(grantedName('Python 3 (ipykernel)', null, granted(1, 8192))).toBe('Python 3 (ipykernel)');
  });

  it('names the real grant in place of the spec\'s', () => {
    expect(grantedName(SPEC_1X4GI, GRANT_1X4GI, granted(1, 8192))).toBe(
      `Python${NB}3 · 1${NB}vGPU · 8${NB}GiB`
    );
    expect(grantedName(SPEC_1X4GI, GRANT_1X4GI, granted(2, 3072))).toBe(
      `Python${NB}3 · 2${NB}vGPUs × 3${NB}GiB`
    );
    expect(grantedName(SPEC_1X4GI, GRANT_1X4GI, granted(1, 4096, 50))).toBe(
      `Python${NB}3 · 1${NB}vGPU · 4${NB}GiB · 50%${NB}compute`
    );
    // a spec name written with plain spaces (an older install) is read the same way
    expect(grantedName('Python 3 · 1 vGPU · 4 GiB', GRANT_1X4GI, granted(1, 8192))).toBe(
      `Python 3 · 1${NB}vGPU · 8${NB}GiB`
    );
  });

  it("puts the real grant after a name an instructor wrote without the spec's grant", () => {
    expect(grantedName('Deep learning (large)', GRANT_1X4GI, granted(1, 8192))).toBe(
      `Deep learning (large) · 1${NB}vGPU · 8${NB}GiB`
    );
  });
});
