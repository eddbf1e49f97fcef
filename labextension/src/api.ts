// The orion-jupyter REST API ({base_url}/orion/api/...) and how its values are shown.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One of this server's vGPU kernels (GET allocations). */
export interface IAllocation {
  kernel_id: string;
  kernel_spec: string;
  path: string | null;
  user: string;
  backend: string;
  cluster: string | null;
  vgpus: number | null;
  memory_mib: number | null;
  compute_percent: number | null;
  pod: string | null;
  pid?: number;
  node: string | null;
  phase: string;
  reason: string;
  started: string | null;
  last_activity: string | null;
  execution_state: string | null;
}

export interface IResourceCount {
  allocatable: number;
  allocated: number;
  free: number;
}

/** The vGPU pool (GET pool): per node and in total, per extended resource. */
export interface IPool {
  source: string;
  visible: boolean;
  nodes: { name: string; resources: Record<string, IResourceCount> }[];
  totals: Record<string, IResourceCount>;
  count_resource: string;
}

/** A vGPU kernel spec (GET specs); `can_start` is null when the pool is not visible. */
export interface ISpec {
  name: string;
  display_name: string;
  description?: string;
  backend?: string;
  vgpus?: number;
  memory_mib?: number;
  compute_percent?: number | null;
  can_start: boolean | null;
  error?: string;
}

/** A kernel of the class (GET class). */
export interface IClassKernel {
  pod: string | null;
  namespace: string | null;
  user: string;
  kernel_id: string;
  node: string | null;
  phase: string;
  reason: string;
  vgpus: number | null;
  memory_mib: number | null;
  idle_seconds: number | null;
}

export interface IClass {
  kernels: IClassKernel[];
  instructor: boolean;
}

/** A launch progress message (GET events). */
export interface IEvent {
  seq: number;
  time: number;
  stage: string;
  level: string;
  message: string;
}

export interface IKernelRequest {
  spec: string;
  vgpus: number;
  memory: string;
  kernel_id: string;
}

/** The kernel model POST kernels answers with. */
export interface IStartedKernel {
  id: string;
  name: string;
  vgpu: IAllocation | null;
}

/** An answer other than 2xx: the server's own message (and the request field it names). */
export class APIError extends Error {
  constructor(
    message: string,
    readonly field?: string
  ) {
    super(message);
  }
}

/** Calls {base_url}/orion/api/{endpoint}; base URL, token and XSRF come from the page's settings. */
export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  query: Record<string, string | number> = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url =
    URLExt.join(settings.baseUrl, 'orion', 'api', endpoint) +
    URLExt.objectToQueryString(query);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message =
      body?.message ??
      `${endpoint}: ${response.status} ${response.statusText}`.trim();
    throw new APIError(message, body?.field);
  }
  return body as T;
}

export const getAllocations = async (): Promise<IAllocation[]> =>
  (await requestAPI<{ kernels: IAllocation[] }>('allocations')).kernels;

export const getPool = (): Promise<IPool> => requestAPI<IPool>('pool');

export const getSpecs = async (): Promise<ISpec[]> =>
  (await requestAPI<{ specs: ISpec[] }>('specs')).specs;

export const getClass = (): Promise<IClass> => requestAPI<IClass>('class');

export const getEvents = async (
  kernelId: string,
  after: number
): Promise<IEvent[]> =>
  (
    await requestAPI<{ events: IEvent[] }>(
      'events',
      {},
      { kernel: kernelId, after }
    )
  ).events;

export const startKernel = (request: IKernelRequest): Promise<IStartedKernel> =>
  requestAPI<IStartedKernel>('kernels', {
    method: 'POST',
    body: JSON.stringify(request)
  });

export const stopClassPod = (pod: string): Promise<unknown> =>
  requestAPI(`class/${encodeURIComponent(pod)}`, { method: 'DELETE' });

/** The text of any error, for showing it where the data would be. */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** 3072 → "3 GiB", 1536 → "1.5 GiB", 512 → "512 MiB". */
export function formatMemory(mib: number | null | undefined): string {
  if (mib === null || mib === undefined) {
    return '—';
  }
  if (mib < 1024) {
    return `${mib} MiB`;
  }
  const gib = mib / 1024;
  return `${Number.isInteger(gib) ? gib : gib.toFixed(1)} GiB`;
}

/** 3072 → "3Gi", 1536 → "1536Mi": the form the server accepts for `memory`. */
export function memoryQuantity(mib: number): string {
  return mib % 1024 === 0 ? `${mib / 1024}Gi` : `${mib}Mi`;
}

/** "3Gi", "3 GiB", "3072", "512Mi" → MiB; null when it is not a size. */
export function parseMemory(text: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(gi|gib|g|mi|mib|m)?\s*$/i.exec(text);
  if (!match) {
    return null;
  }
  const value = parseFloat(match[1]);
  return (match[2] ?? 'm').toLowerCase().startsWith('g')
    ? Math.round(value * 1024)
    : Math.round(value);
}

/** "1 × 3 GiB", or "CPU only" for a kernel without vGPUs. */
export function formatVGPUs(
  vgpus: number | null,
  memoryMib: number | null
): string {
  return vgpus ? `${vgpus} × ${formatMemory(memoryMib)}` : 'CPU only';
}

/** 42 → "42 s", 390 → "6 min", 7200 → "2 h". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '—';
  }
  if (seconds < 60) {
    return `${Math.max(0, Math.round(seconds))} s`;
  }
  if (seconds < 3600) {
    return `${Math.round(seconds / 60)} min`;
  }
  return `${(seconds / 3600).toFixed(seconds < 36000 ? 1 : 0)} h`;
}

/** Seconds since a server timestamp ("2026-01-02 03:04:05.678901+00:00" or ISO 8601). */
export function secondsSince(stamp: string | null): number | null {
  if (!stamp) {
    return null;
  }
  const iso = stamp.replace(' ', 'T').replace(/(\.\d{3})\d+/, '$1');
  const time = Date.parse(iso);
  return isNaN(time) ? null : (Date.now() - time) / 1000;
}
