// The "New vGPU notebook" form's check before anything is sent: the server's own rules
// (vgpu.parse_count, VGPURequest.parse) and words, so a typo is named at once, in the dialog.
// Whether the pool can serve the request is the server's to say (409, with the short resource).
import { TranslationBundle, nullTranslator } from '@jupyterlab/translation';

import { DOMAIN, MAX_VGPUS, readMemory } from './format';

/** What the form holds, as typed. */
export interface ILaunchValues {
  spec: string | null;
  memory: string;
  vgpus: string;
}

/** The body of POST kernels (less `path` and `kernel_id`, which the launch adds). */
export interface ILaunchRequest {
  spec: string;
  vgpus: number;
  memory?: string;
}

/** Either a request to send, or the field at fault and why. */
export type LaunchCheck =
  | { request: ILaunchRequest; field?: undefined; message?: undefined }
  | { request?: undefined; field: 'spec' | 'memory' | 'vgpus'; message: string };

const plain = nullTranslator.load(DOMAIN);
const NUMBER_RE = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;

/** A whole number of vGPUs from 0 to 64, or why not (vgpu.parse_count). */
export function readCount(
  value: string | number,
  trans: TranslationBundle = plain
): { count: number; error?: undefined } | { count?: undefined; error: string } {
  const what = trans.__('vGPU count');
  const shown = typeof value === 'string' ? `"${value}"` : String(value);
  const use = trans.__('use 0 for CPU only, or 1, 2, ...');
  const text = typeof value === 'string' ? value.trim() : String(value);
  const number = NUMBER_RE.test(text) ? Number(text) : NaN;
  if (!isFinite(number)) {
    return { error: trans.__('%1 %2 is not a number; %3', what, shown, use) };
  }
  if (number < 0) {
    return { error: trans.__('%1 %2 is negative; %3', what, shown, use) };
  }
  if (!Number.isInteger(number)) {
    return {
      error: trans.__(
        '%1 %2 is a fraction; vGPUs come whole (1, 2, ...): for a smaller slice ask for less vGPU memory',
        what,
        shown
      )
    };
  }
  if (number > MAX_VGPUS) {
    return {
      error: trans.__(
        '%1 %2 is more than any node has; use at most %3',
        what,
        shown,
        MAX_VGPUS
      )
    };
  }
  return { count: number };
}

/** The form's values checked as the server checks them; memory goes as typed. */
export function checkLaunch(
  values: ILaunchValues,
  trans: TranslationBundle = plain
): LaunchCheck {
  if (!values.spec) {
    return { field: 'spec', message: trans.__('Choose a kernel spec.') };
  }
  const count = readCount(values.vgpus, trans);
  if (count.error !== undefined) {
    return { field: 'vgpus', message: count.error };
  }
  if (count.count === 0) {
    // A CPU-only kernel holds no GPU memory, whatever the memory field says.
    return { request: { spec: values.spec, vgpus: 0 } };
  }
  const memory = values.memory.trim();
  const reading = readMemory(memory, trans);
  if (reading.error !== undefined) {
    return { field: 'memory', message: reading.error };
  }
  if (reading.mib === 0) {
    return {
      field: 'memory',
      message: trans._n(
        'vGPU memory "%2" is zero, but %1 vGPU was asked for; give each vGPU some memory, like 4Gi (or ask for 0 vGPUs for CPU only)',
        'vGPU memory "%2" is zero, but %1 vGPUs were asked for; give each vGPU some memory, like 4Gi (or ask for 0 vGPUs for CPU only)',
        count.count,
        memory
      )
    };
  }
  return { request: { spec: values.spec, vgpus: count.count, memory } };
}
