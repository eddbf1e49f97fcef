// The dialog's check before anything is sent: the server's rules and words.
import { describe, expect, it } from 'vitest';

import { checkLaunch } from '../src/validate';

describe('checkLaunch', () => {
  it('sends memory as typed', () => {
    expect(checkLaunch({ spec: 'orion-1x2gi', memory: ' 3Gi ', vgpus: '1' })).toEqual({
      request: { spec: 'orion-1x2gi', vgpus: 1, memory: '3Gi' }
    });
  });

  it('asks for a spec first', () => {
    expect(checkLaunch({ spec: null, memory: '3Gi', vgpus: '1' })).toEqual({
      field: 'spec',
      message: 'Choose a kernel spec.'
    });
  });

  it('names the memory field with the server words', () => {
    expect(checkLaunch({ spec: 's', memory: '4 GB?', vgpus: '1' })).toEqual({
      field: 'memory',
      message: 'vGPU memory "4 GB?" is not a size; use a number of MiB or a value like 4Gi'
    });
    expect(checkLaunch({ spec: 's', memory: '', vgpus: '1' })).toEqual({
      field: 'memory',
      message: 'vGPU memory "" is empty; use a number of MiB or a value like 4Gi'
    });
    expect(checkLaunch({ spec: 's', memory: '4K', vgpus: '2' }).field).toBe('memory');
  });

  it('refuses zero memory for a vGPU kernel, as VGPURequest.parse does', () => {
    expect(checkLaunch({ spec: 's', memory: '0', vgpus: '1' }).message).toBe(
      'vGPU memory "0" is zero, but 1 vGPU was asked for; give each vGPU some memory, like 4Gi (or ask for 0 vGPUs for CPU only)'
    );
    expect(checkLaunch({ spec: 's', memory: '0Gi', vgpus: '2' }).message).toContain(
      'but 2 vGPUs were asked for'
    );
  });

  it('names the vGPU count', () => {
    expect(checkLaunch({ spec: 's', memory: '4Gi', vgpus: '1.5' })).toEqual({
      field: 'vgpus',
      message:
        'vGPU count "1.5" is a fraction; vGPUs come whole (1, 2, ...): for a smaller slice ask for less vGPU memory'
    });
    expect(checkLaunch({ spec: 's', memory: '4Gi', vgpus: '' }).field).toBe('vgpus');
    expect(checkLaunch({ spec: 's', memory: '4Gi', vgpus: '65' }).field).toBe('vgpus');
  });

  it('sends no memory for CPU only, whatever the field says', () => {
    expect(checkLaunch({ spec: 's', memory: 'nonsense', vgpus: '0' })).toEqual({
      request: { spec: 's', vgpus: 0 }
    });
  });

  it('leaves the pool to the server: 64Gi goes out', () => {
    expect(checkLaunch({ spec: 's', memory: '64Gi', vgpus: '1' }).request).toEqual({
      spec: 's',
      vgpus: 1,
      memory: '64Gi'
    });
  });
});
