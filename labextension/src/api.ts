// The orion-jupyter REST API ({base_url}/orion/api/...): its answers' shapes and one call each.
// Fields marked "newer servers" may be absent: the views show what is there.
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
  /** The allocation as people read it, "1 vGPU · 4 GiB" (vgpu.format_allocation; newer servers). */
  label?: string;
  /** vGPU memory in use, in bytes, or null when not measured (newer servers). */
  memory_used?: number | null;
  /** When memory_used was measured (newer servers). */
  memory_sampled_at?: string | null;
  /** How: "torch", "nvml" or "rss" (a CPU-only kernel's resident memory; newer servers). */
  memory_source?: string | null;
  /** vGPUs × memory per vGPU, in bytes, and what of it is unused (null: use not known). */
  memory_granted?: number;
  waste_bytes?: number | null;
  /** When the kernel is stopped if it stays idle (ISO-8601 UTC); null when busy, exempt or culling is
   * off (newer servers). */
  cull_at?: string | null;
  /** Within the warning time before cull_at: the owner is told, and may keep it. */
  cull_warning?: boolean;
  /** Keeps left in this idle stretch; null when the kernel is never stopped for being idle. */
  keeps_left?: number | null;
  /** An instructor spared it from idle culling. */
  exempt?: boolean;
  /** Idle culling parks it (its variables saved, Resume brings them back) rather than stopping it. */
  cull_parks?: boolean;
}

/** What POST kernels/{id}/keep and kernels/{id}/exempt answer: the kernel's new culling fields. */
export interface ICullFields {
  kernel_id: string;
  cull_at: string | null;
  cull_warning: boolean;
  keeps_left: number | null;
  exempt: boolean;
}

/** Where a launch waits for a vGPU: 1-based position, how many are ahead, about how long. */
export interface IQueued {
  position: number;
  ahead: number;
  estimate_seconds: number | null;
}

/** One of this user's launches waiting for a vGPU (GET queue). */
export interface IQueueEntry extends IQueued {
  kernel_id: string;
  /** Since when, in epoch seconds. */
  since: number;
  course: string;
  vgpus: number;
  /** Per vGPU, as asked ("4Gi"). */
  memory: string;
  kernel_spec_name: string;
  /** The notebook (or folder) the kernel is for, or null. */
  path: string | null;
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
  /** Why `can_start` is false (the pool's shortage, a quota), when the server says. */
  why_not?: string;
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
  label?: string;
  memory_used?: number | null;
  memory_sampled_at?: string | null;
  memory_source?: string | null;
  memory_granted?: number;
  waste_bytes?: number | null;
  /** Spared from idle culling (when the server says). */
  exempt?: boolean;
  /** The course (hub group) the kernel runs for, where the server says. */
  course?: string;
}

/** Per student, what the vGPU broker parked of theirs (hub mode, instructors). */
export interface IParkedRow {
  user: string;
  snapshots: number;
  bytes: number;
  /** When the last one was parked (ISO-8601 UTC) and its id. */
  last?: string | null;
  last_snapshot?: string | null;
}

/** What POST class/park answers: what was parked, and what keeps running and why. */
export interface ICourseParked {
  course: string;
  parked: { kernel_id: string; user: string; snapshot: string }[];
  not_parked: { kernel_id: string; user: string; reason: string; message: string }[];
}

export interface IClass {
  kernels: IClassKernel[];
  instructor: boolean;
  /** Each student's vGPU-hour budget, for instructors (newer servers). */
  budgets?: IBudgetRow[];
  /** Per student, the kernels the broker parked (hub mode; newer servers). */
  parked?: IParkedRow[];
}

/** A launch progress message (GET events). */
export interface IEvent {
  seq: number;
  time: number;
  stage: string;
  level: string;
  message: string;
  /** While the launch waits in the queue (stage "queue"); absent once it left it. */
  queued?: IQueued;
  /** The last event of a kernel stopped for being idle. */
  culled?: boolean;
}

/** The body of POST kernels; `path` is the folder (or notebook) the kernel starts in. */
export interface IKernelRequest {
  spec: string;
  vgpus: number;
  memory?: string;
  compute?: number;
  path?: string;
  kernel_id?: string;
}

/** A demo notebook (GET demos). */
export interface IDemo {
  name: string;
  title: string;
  path: string;
}

/** What POST demos/{name} answers: the notebook placed for the user and the kernel started for it. */
export interface IStartedDemo {
  path: string;
  kernel_id: string;
  kernel: IStartedKernel;
  running: boolean;
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
    readonly field?: string,
    readonly status?: number,
    /** The server's reason, e.g. "unschedulable", "cancelled". */
    readonly reason?: string
  ) {
    super(message);
  }
}

/** The launch's answer after its place in the queue was given up (DELETE queue/{id}): no error. */
export function isCancelled(error: unknown): boolean {
  return error instanceof APIError && error.status === 409 && error.reason === 'cancelled';
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
    throw new APIError(message, body?.field, response.status, body?.reason);
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

export const getDemos = async (): Promise<IDemo[]> =>
  (await requestAPI<{ demos: IDemo[] }>('demos')).demos;

/** Places the demo notebook (never over the user's copy) and starts a kernel for it. */
export const startDemo = (
  name: string,
  request: { spec?: string; kernel_id?: string } = {}
): Promise<IStartedDemo> =>
  requestAPI<IStartedDemo>(`demos/${encodeURIComponent(name)}`, {
    method: 'POST',
    body: JSON.stringify(request)
  });

/** Restarts an idle kernel's idle clock; 409 when no keeps are left. */
export const keepKernel = (kernelId: string): Promise<ICullFields> =>
  requestAPI<ICullFields>(`kernels/${encodeURIComponent(kernelId)}/keep`, {
    method: 'POST',
    body: '{}'
  });

/** Instructors: never (or again) stop this kernel for being idle. */
export const setExempt = (kernelId: string, exempt: boolean): Promise<ICullFields> =>
  requestAPI<ICullFields>(`kernels/${encodeURIComponent(kernelId)}/exempt`, {
    method: 'POST',
    body: JSON.stringify({ exempt })
  });

/** This user's launches waiting for a vGPU on this server. */
export const getQueue = async (): Promise<IQueueEntry[]> =>
  (await requestAPI<{ waiting: IQueueEntry[] }>('queue')).waiting;

/** Gives up a waiting launch's place: its pending POST then answers 409, reason "cancelled". */
export const cancelQueued = (kernelId: string): Promise<{ cancelled: string }> =>
  requestAPI<{ cancelled: string }>(`queue/${encodeURIComponent(kernelId)}`, {
    method: 'DELETE'
  });

export const stopClassPod = (pod: string): Promise<unknown> =>
  requestAPI(`class/${encodeURIComponent(pod)}`, { method: 'DELETE' });

/** The class view's Park: the kernel's owner or an instructor (hub mode: the broker decides). */
export const parkClassKernel = (kernelId: string): Promise<IParked> =>
  requestAPI<IParked>(`class/kernels/${encodeURIComponent(kernelId)}/park`, {
    method: 'POST',
    body: '{}'
  });

/** Instructors: park every kernel of a course (the end of a lab). */
export const parkCourse = (course: string): Promise<ICourseParked> =>
  requestAPI<ICourseParked>('class/park', { method: 'POST', body: JSON.stringify({ course }) });

/** One of this user's parked kernels (GET snapshots); `error` instead of the rest when unreadable. */
export interface ISnapshot {
  id: string;
  /** When it was parked (ISO-8601 UTC). */
  created?: string | null;
  bytes?: number | null;
  /** The parked kernel's spec, the notebook it ran (the session's path) and its vGPU request. */
  spec?: string | null;
  path?: string | null;
  vgpu?: { vgpus?: number | null; memory_mib?: number | null; label?: string } | null;
  saved?: string[];
  not_saved?: Record<string, string>;
  error?: string;
}

/** What POST kernels/{id}/park answers: the snapshot, what it holds and what it could not. */
export interface IParked {
  snapshot: string;
  saved: string[];
  not_saved: Record<string, string>;
  bytes: number;
  kernel_id: string;
}

/** What POST snapshots/{id}/resume answers: the new kernel and what came back into it. */
export interface IResumed {
  kernel_id: string;
  spec: string;
  path: string | null;
  snapshot: string;
  restored: string[];
  /** Every parked name that did not come back, with why (those never saved included). */
  not_restored: Record<string, string>;
  /** GPU tensors put elsewhere (no GPU in the new kernel): name → where. */
  moved?: Record<string, string>;
  /** Something did not come back: the snapshot stays, to try again or delete. */
  snapshot_kept?: boolean;
}

/** This user's parked kernels; a server that keeps none here says so (supported: false; older ones answer 501),
 * which rejects with status 501 so the model stops asking. */
export const getSnapshots = async (): Promise<ISnapshot[]> => {
  const answer = await requestAPI<{ snapshots: ISnapshot[]; supported?: boolean }>('snapshots');
  if (answer.supported === false) {
    throw Object.assign(new Error('this server keeps no snapshots'), { status: 501 });
  }
  return answer.snapshots;
};

/** Saves the kernel's variables, then stops it (its vGPU is free at once). */
export const parkKernel = (kernelId: string): Promise<IParked> =>
  requestAPI<IParked>(`kernels/${encodeURIComponent(kernelId)}/park`, { method: 'POST', body: '{}' });

/** A new kernel (the parked one's spec, or `spec`) with the snapshot restored in it. */
export const resumeSnapshot = (snapshotId: string, spec?: string): Promise<IResumed> =>
  requestAPI<IResumed>(`snapshots/${encodeURIComponent(snapshotId)}/resume`, {
    method: 'POST',
    body: JSON.stringify(spec ? { spec } : {})
  });

export const deleteSnapshot = (snapshotId: string): Promise<{ deleted: string }> =>
  requestAPI<{ deleted: string }>(`snapshots/${encodeURIComponent(snapshotId)}`, {
    method: 'DELETE'
  });

/** The text of any error, for showing it where the data would be. */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A vGPU-hour budget (GET budget), the same shape in direct and hub mode; `budget` null: none applies. */
export interface IBudget {
  budget: number | null;
  used?: number;
  left?: number;
  /** "vGPU-hours" or "vGPU-memory-GiB-hours". */
  unit?: string;
  course?: string;
  /** When the window resets (ISO-8601), and the same as the lab's clock says it ("Tue 09:00"). */
  resets?: string;
  resets_text?: string;
  period?: 'week' | 'term';
  /** The server's sentence: "2.5 of 10 vGPU-hours left this week · resets Tue 09:00". */
  text: string;
  /** The last warning level crossed (80 %, 95 %), until a top-up or the reset. */
  warning?: { level: number; message: string } | null;
}

/** One student's use and what is left (the `budgets` of GET class; instructors). */
export interface IBudgetRow extends IBudget {
  user: string;
}

/** This user's vGPU-hour budget. */
export const getBudget = (): Promise<IBudget> => requestAPI<IBudget>('budget');

/** Instructors: `hours` more for `user` in this window; the student's new budget. */
export const topUpBudget = (user: string, hours: number): Promise<IBudgetRow> =>
  requestAPI<IBudgetRow>(`budgets/${encodeURIComponent(user)}/topup`, {
    method: 'POST',
    body: JSON.stringify({ hours })
  });
