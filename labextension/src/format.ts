// How values are read and written for people: the same rules as the server's orion_jupyter.vgpu
// (parse_memory, format_mib, format_allocation). Pure functions, no DOM: the unit tests run them,
// against the table tests/memory_cases.json that the Python tests read too.
import { TranslationBundle, nullTranslator } from '@jupyterlab/translation';

export const MIB = 1024 * 1024;
export const GIB = 1024 * MIB;
/** No GPU has a terabyte of memory per slice; anything larger is a typo (vgpu.MAX_MEMORY_MIB). */
export const MAX_MEMORY_MIB = 1024 * 1024;
export const MAX_VGPUS = 64;

/** The translation domain of this extension's strings. */
export const DOMAIN = 'orion_jupyter';

const plain: TranslationBundle = nullTranslator.load(DOMAIN);

const UNITS_TO_BYTES: Record<string, number> = {
  '': MIB, // a plain number is MiB, as ORION_GMEM is
  mi: MIB,
  mib: MIB,
  gi: 1024 * MIB,
  gib: 1024 * MIB,
  ti: 1024 * 1024 * MIB,
  tib: 1024 * 1024 * MIB,
  m: 1000 ** 2,
  mb: 1000 ** 2,
  g: 1000 ** 3,
  gb: 1000 ** 3,
  t: 1000 ** 4,
  tb: 1000 ** 4
};
const SIZE_RE =
  /^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$/;

/** A memory size read as whole MiB, or why it is not one (in the server's words). */
export type MemoryReading =
  | { mib: number; error?: undefined }
  | { mib?: undefined; error: string };

/**
 * "4Gi" → 4096, "4G" → 3814 (4·10⁹ bytes), "4096" → 4096 (a plain number is MiB), "0.5Gi" → 512;
 * units Mi, Gi, Ti (binary), M, G, T (decimal), with an optional B or iB; whole MiB, rounded down.
 */
export function readMemory(
  value: string | number,
  trans: TranslationBundle = plain,
  label = trans.__('vGPU memory')
): MemoryReading {
  const hint = trans.__('use a number of MiB or a value like 4Gi');
  const shown = typeof value === 'string' ? `"${value}"` : String(value);
  let number: number;
  let bytesPerUnit: number;
  if (typeof value === 'string') {
    if (!value.trim()) {
      return { error: trans.__('%1 %2 is empty; %3', label, shown, hint) };
    }
    const match = SIZE_RE.exec(value);
    if (!match) {
      return { error: trans.__('%1 %2 is not a size; %3', label, shown, hint) };
    }
    const unit = match[2];
    if (!(unit.toLowerCase() in UNITS_TO_BYTES)) {
      return {
        error: trans.__(
          '%1 %2 has an unknown unit "%3"; use Mi, Gi, Ti, M, G or T (a plain number is MiB)',
          label,
          shown,
          unit
        )
      };
    }
    number = Number(match[1]);
    bytesPerUnit = UNITS_TO_BYTES[unit.toLowerCase()];
  } else {
    number = value;
    bytesPerUnit = MIB;
  }
  if (!isFinite(number)) {
    return { error: trans.__('%1 %2 is not a size; %3', label, shown, hint) };
  }
  if (number < 0) {
    return {
      error: trans.__(
        '%1 %2 is negative; use a positive size like 4Gi',
        label,
        shown
      )
    };
  }
  const bytes = number * bytesPerUnit;
  if (bytes > MAX_MEMORY_MIB * MIB) {
    return {
      error: trans.__(
        '%1 %2 is more than any GPU has (the most is %3); use a value like 4Gi',
        label,
        shown,
        formatMib(MAX_MEMORY_MIB)
      )
    };
  }
  // Python's float floor division: never one more than the exact quotient.
  let mib = Math.floor(bytes / MIB);
  if (mib * MIB > bytes) {
    mib -= 1;
  }
  if (bytes > 0 && mib === 0) {
    return {
      error: trans.__(
        '%1 %2 is less than 1 MiB; use a value like 512Mi or 4Gi',
        label,
        shown
      )
    };
  }
  return { mib: mib || 0 }; // never -0
}

/** MiB, or null when the text is not a size (see readMemory for why). */
export function parseMemory(value: string | number): number | null {
  return readMemory(value).mib ?? null;
}

/** 3072 → "3Gi", 1536 → "1536Mi": the form the server accepts for `memory`. */
export function memoryQuantity(mib: number): string {
  return mib % 1024 === 0 ? `${mib / 1024}Gi` : `${mib}Mi`;
}

/** 4096 → "4 GiB", 1536 → "1.5 GiB", 512 → "512 MiB", 3814 → "3814 MiB" (as vgpu.format_mib). */
export function formatMib(mib: number | null | undefined): string {
  if (mib === null || mib === undefined) {
    return '—';
  }
  // GiB when that is exact to two decimals: a whole multiple of 256 MiB.
  if (mib >= 1024 && Number.isInteger(mib) && (mib * 100) % 1024 === 0) {
    return `${mib / 1024} GiB`;
  }
  return `${mib} MiB`;
}

/**
 * "1 vGPU · 4 GiB", "2 vGPUs × 8 GiB", "CPU only", "1 vGPU · 4 GiB · 50% compute": the one way an
 * allocation is written for people (vgpu.format_allocation; the server sends it as `label`).
 */
export function formatAllocation(
  vgpus: number | null | undefined,
  memoryMib: number | null | undefined,
  computePercent: number | null = null,
  trans: TranslationBundle = plain
): string {
  if (!vgpus) {
    return trans.__('CPU only');
  }
  const memory = formatMib(memoryMib ?? 0);
  const text = trans._n('%1 vGPU · %2', '%1 vGPUs × %2', vgpus, memory);
  return computePercent !== null && computePercent !== undefined
    ? trans.__('%1 · %2% compute', text, computePercent)
    : text;
}

/** The status bar's short form: "1 × 4 GiB", or "CPU only". */
export function formatShort(
  vgpus: number | null | undefined,
  memoryMib: number | null | undefined,
  trans: TranslationBundle = plain
): string {
  return vgpus
    ? trans.__('%1 × %2', vgpus, formatMib(memoryMib))
    : trans.__('CPU only');
}

/** Memory in use (bytes), to one decimal: 1288490189 → "1.2 GiB", 52428800 → "50 MiB". */
export function formatBytes(bytes: number): string {
  if (bytes < GIB) {
    return `${Math.round(bytes / MIB)} MiB`;
  }
  const gib = bytes / GIB;
  return `${gib >= 100 ? Math.round(gib) : Number(gib.toFixed(1))} GiB`;
}

interface IUsage {
  vgpus: number | null;
  memory_mib: number | null;
  memory_used?: number | null;
  memory_granted?: number;
  waste_bytes?: number | null;
}

/** What a kernel was granted in bytes: vGPUs × memory per vGPU (0 for CPU only). */
export function grantedBytes(k: IUsage): number {
  return k.memory_granted ?? (k.vgpus ?? 0) * (k.memory_mib ?? 0) * MIB;
}

/** The memory a kernel holds without using it, in bytes; null when its use is not known. */
export function wasteBytes(k: IUsage): number | null {
  if (k.waste_bytes !== undefined) {
    return k.waste_bytes; // the server's own
  }
  if (k.memory_used === null || k.memory_used === undefined) {
    return null;
  }
  return Math.max(0, grantedBytes(k) - k.memory_used);
}

/**
 * The class table by waste, as the server sorts GET class?sort=waste: the most granted-and-unused
 * memory first, then the longest idle; kernels that waste nothing or whose use is not known last.
 */
export function byWaste<T extends IUsage & { idle_seconds: number | null }>(a: T, b: T): number {
  const key = (k: T) => -(wasteBytes(k) || -1);
  return key(a) - key(b) || (b.idle_seconds || 0) - (a.idle_seconds || 0);
}

/** 42 → "42 s", 390 → "7 min", 7200 → "2.0 h". */
export function formatDuration(
  seconds: number | null | undefined,
  trans: TranslationBundle = plain
): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '—';
  }
  if (seconds < 60) {
    return trans.__('%1 s', Math.max(0, Math.round(seconds)));
  }
  if (seconds < 3600) {
    return trans.__('%1 min', Math.round(seconds / 60));
  }
  return trans.__('%1 h', (seconds / 3600).toFixed(seconds < 36000 ? 1 : 0));
}

/** A server timestamp ("2026-01-02 03:04:05.678901+00:00" or ISO 8601) in ms, or null. */
export function parseStamp(stamp: string | null | undefined): number | null {
  if (!stamp) {
    return null;
  }
  const iso = stamp.replace(' ', 'T').replace(/(\.\d{3})\d+/, '$1');
  const time = Date.parse(iso);
  return isNaN(time) ? null : time;
}

/** Seconds since a server timestamp. */
export function secondsSince(
  stamp: string | null | undefined,
  now: number = Date.now()
): number | null {
  const time = parseStamp(stamp);
  return time === null ? null : (now - time) / 1000;
}

/** A server timestamp as this browser's local time of day, "09:05" (null when not a time). */
export function formatClock(stamp: string | null | undefined): string | null {
  const time = parseStamp(stamp);
  if (time === null) {
    return null;
  }
  const date = new Date(time);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** 1 → "1st", 2 → "2nd", 3 → "3rd", 4 → "4th", 11 → "11th", 22 → "22nd". */
export function formatOrdinal(n: number, trans: TranslationBundle = plain): string {
  const tens = Math.abs(n) % 100;
  const ones = Math.abs(n) % 10;
  if (tens < 11 || tens > 13) {
    if (ones === 1) {
      return trans.__('%1st', n);
    }
    if (ones === 2) {
      return trans.__('%1nd', n);
    }
    if (ones === 3) {
      return trans.__('%1rd', n);
    }
  }
  return trans.__('%1th', n);
}

/** A launch's place in the queue: "Waiting for a vGPU: 3rd in line, about 2 min". */
export function formatQueued(
  queued: { position: number; estimate_seconds: number | null },
  trans: TranslationBundle = plain
): string {
  const place = formatOrdinal(queued.position, trans);
  const estimate = queued.estimate_seconds;
  return typeof estimate === 'number' && isFinite(estimate) && estimate >= 0
    ? trans.__('Waiting for a vGPU: %1 in line, about %2', place, formatDuration(estimate, trans))
    : trans.__('Waiting for a vGPU: %1 in line', place);
}

/** The status bar's queue item: "vGPU queue: 3rd" (each waiting launch, best first). */
export function formatQueueStatus(
  waiting: { position: number }[],
  trans: TranslationBundle = plain
): string {
  const places = waiting
    .map(w => w.position)
    .sort((a, b) => a - b)
    .map(p => formatOrdinal(p, trans));
  return trans.__('vGPU queue: %1', places.join(', '));
}

/** What an idle kernel about to be stopped shows: the time, whether Keep is offered, and why. */
export interface ICullNotice {
  /** "idle: stops at 10:42", or "idle: parks at 10:42" where culling parks the kernel */
  text: string;
  /** Keep is offered (some keeps left, or the server does not count them). */
  canKeep: boolean;
  /** "no keeps left" when there are none. */
  noKeeps: string | null;
  /** A sentence for the tooltip. */
  title: string;
}

/**
 * For a kernel with cull_warning: "idle: stops at 10:42" ("parks at" where culling parks it), Keep
 * while keeps are left; null when it is not about to be stopped.
 */
export function cullNotice(
  k: {
    cull_at?: string | null;
    cull_warning?: boolean;
    keeps_left?: number | null;
    cull_parks?: boolean;
  },
  trans: TranslationBundle = plain
): ICullNotice | null {
  const clock = k.cull_warning ? formatClock(k.cull_at) : null;
  if (clock === null) {
    return null;
  }
  const left = k.keeps_left;
  const none = left === 0;
  const title = k.cull_parks
    ? trans.__(
        'Parked, not lost: its variables are saved first, and Resume brings them back.'
      )
    : '';
  const notice = {
    text: k.cull_parks ? trans.__('idle: parks at %1', clock) : trans.__('idle: stops at %1', clock),
    canKeep: !none,
    noKeeps: none ? trans.__('no keeps left') : null,
    title: none
      ? trans.__(
          'Idle: this kernel is stopped at %1 to free its vGPU. No keeps are left: run something in it to keep it.',
          clock
        )
      : typeof left === 'number'
        ? trans._n(
            'Idle: this kernel is stopped at %2 to free its vGPU unless kept (%1 keep left).',
            'Idle: this kernel is stopped at %2 to free its vGPU unless kept (%1 keeps left).',
            left,
            clock
          )
        : trans.__('Idle: this kernel is stopped at %1 to free its vGPU unless kept.', clock)
  };
  return title ? { ...notice, title: `${notice.title} ${title}` } : notice;
}

/** A snapshot's size: 12288 → "12 KiB", then as formatBytes ("1.2 GiB"); null → "—". */
export function formatSize(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes)) {
    return '—';
  }
  return bytes < MIB ? `${Math.max(1, Math.round(bytes / 1024))} KiB` : formatBytes(bytes);
}

/** The status bar's word for a parked notebook: "parked 10:42" (this browser's time of day). */
export function formatParked(
  snapshot: { created?: string | null },
  trans: TranslationBundle = plain
): string {
  const clock = formatClock(snapshot.created);
  return clock ? trans.__('parked %1', clock) : trans.__('parked');
}

/** "a (reason); b (reason)", at most `most` of them, then "and 3 more". */
function reasons(
  named: Record<string, string>,
  trans: TranslationBundle,
  most = 5
): string {
  const entries = Object.entries(named).sort(([a], [b]) => a.localeCompare(b));
  const shown = entries.slice(0, most).map(([name, why]) => trans.__('%1 (%2)', name, why));
  if (entries.length > most) {
    shown.push(trans.__('and %1 more', entries.length - most));
  }
  return shown.join('; ');
}

/** "answer, df, np", at most `most` names, then "and 3 more". */
function names(list: string[], trans: TranslationBundle, most = 8): string {
  const sorted = [...list].sort();
  const shown = sorted.slice(0, most);
  if (sorted.length > most) {
    shown.push(trans.__('and %1 more', sorted.length - most));
  }
  return shown.join(', ');
}

/** After a park: what was saved, its size, that the vGPU is free, and what could not be saved. */
export function parkReport(
  parked: { saved: string[]; not_saved: Record<string, string>; bytes?: number | null },
  what: string,
  trans: TranslationBundle = plain
): string {
  const lines = [
    trans._n(
      'Parked %2: %1 variable saved (%3); its vGPU is free.',
      'Parked %2: %1 variables saved (%3); its vGPU is free.',
      parked.saved.length,
      what,
      formatSize(parked.bytes)
    )
  ];
  if (Object.keys(parked.not_saved).length) {
    lines.push(trans.__('Not saved: %1', reasons(parked.not_saved, trans)));
  }
  return lines.join('\n');
}

/** After a resume: what came back, what did not (with why), and tensors put on another device. */
export function resumeReport(
  resumed: {
    restored: string[];
    not_restored: Record<string, string>;
    moved?: Record<string, string>;
    snapshot_kept?: boolean;
  },
  what: string,
  trans: TranslationBundle = plain
): { text: string; complete: boolean } {
  const lost = Object.keys(resumed.not_restored).length;
  const lines = [
    resumed.restored.length
      ? trans.__('Resumed %1: %2 came back.', what, names(resumed.restored, trans))
      : trans.__('Resumed %1: no variables came back.', what)
  ];
  if (lost) {
    lines.push(trans.__('Not restored: %1', reasons(resumed.not_restored, trans)));
  }
  if (Object.keys(resumed.moved ?? {}).length) {
    lines.push(trans.__('Moved: %1', reasons(resumed.moved ?? {}, trans)));
  }
  if (resumed.snapshot_kept) {
    lines.push(trans.__('The snapshot is kept (vGPU sidebar): resume it again or delete it.'));
  }
  return { text: lines.join('\n'), complete: !lost };
}
