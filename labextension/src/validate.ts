// The "New vGPU notebook" form's check before anything is sent: the server's own rules
// (vgpu.parse_count, VGPURequest.parse) and words, so a typo is named at once, in the dialog.
// Whether the pool can serve the request is the server's to say (409, with the short resource);
// what the specs it listed say about now (nothing can start; hub mode: a launch will queue) is here.
import { TranslationBundle, nullTranslator } from '@jupyterlab/translation';

import { IPool, ISpec } from './api';
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
const DECIMAL_RE = /^[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?$/;
const SPECIAL_RE = /^([+-]?)(inf|infinity|nan)$/i;

/** Python's float() of a text: decimals (with _ between digits), inf, infinity, nan; else NaN. */
function pythonFloat(text: string): number {
  const special = SPECIAL_RE.exec(text);
  if (special) {
    return special[2].toLowerCase() === 'nan' ? NaN : special[1] === '-' ? -Infinity : Infinity;
  }
  return DECIMAL_RE.test(text) ? Number(text.replace(/_/g, '')) : NaN;
}

/** A value fit to quote back: a long text is cut (vgpu._short). */
function short(value: string | number): string | number {
  return typeof value === 'string' && value.length > 80 ? value.slice(0, 77) + '...' : value;
}

const quoted = (value: string | number) =>
  typeof value === 'string' ? `"${value}"` : String(value);

/** A whole number of vGPUs from 0 to 64, or why not (vgpu.parse_count). */
export function readCount(
  value: string | number,
  trans: TranslationBundle = plain
): { count: number; error?: undefined } | { count?: undefined; error: string } {
  const what = trans.__('vGPU count');
  const shown = quoted(value);
  const use = trans.__('use 0 for CPU only, or 1, 2, ...');
  const number = typeof value === 'string' ? pythonFloat(value.trim()) : value;
  const tooMany = (quote: string) =>
    trans.__('%1 %2 is more than any node has; use at most %3', what, quote, MAX_VGPUS);
  if (isNaN(number) || number === -Infinity) {
    return { error: trans.__('%1 %2 is not a number; %3', what, shown, use) };
  }
  if (number === Infinity) {
    return { error: tooMany(quoted(short(value))) };
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
    return { error: tooMany(shown) };
  }
  return { count: number || 0 }; // never -0
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

/**
 * Why no spec can start now (every one refused, e.g. the pool is full), or '' when one can: the
 * server's reason for the first refused spec, and what the user can do. A spec whose start the
 * server cannot judge (hub mode: the broker queues a launch) does not block.
 */
export function nothingCanStart(specs: ISpec[], trans: TranslationBundle): string {
  if (!specs.length || specs.some(s => s.can_start !== false && !s.error)) {
    return '';
  }
  const reason = specs.map(s => s.why_not || s.error).find(Boolean);
  // The server's reason ends with its advice; without one, the dialog gives it.
  return reason
    ? trans.__('No vGPU kernel can start now. %1', reason)
    : trans.__(
        'No vGPU kernel can start now. Stop a vGPU kernel you no longer use (the vGPU sidebar), or try again when one is free.'
      );
}

/**
 * Hub mode (the broker decides at launch, so no spec says whether it can start) with no vGPU free:
 * a launch waits in the queue; the dialog says so and its button offers it. '' otherwise.
 */
export function queueNote(specs: ISpec[], pool: IPool | null, trans: TranslationBundle): string {
  const total = pool?.visible ? pool.totals[pool.count_resource] : undefined;
  if (!total || total.free > 0 || !specs.some(s => s.can_start === null && !s.error)) {
    return '';
  }
  return trans.__(
    'No vGPU is free now (%1 of %2 in use): a launch waits in the queue for one, with its place shown, and you may cancel it while it waits.',
    total.allocated,
    total.allocatable
  );
}
