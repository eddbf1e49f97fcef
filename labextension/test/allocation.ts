// A kernel's allocation as GET allocations answers it, for the unit tests: a running 1 × 3 GiB kernel
// of the 2 GiB spec unless `extra` says otherwise.
import type { IAllocation } from '../src/api';

export function allocation(kernel_id: string, extra: Partial<IAllocation> = {}): IAllocation {
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
