// The "vGPU" sidebar: my vGPU kernels, the pool, and (for instructors) the class.
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Kernel } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  IAllocation,
  IClass,
  IClassKernel,
  IPool,
  IResourceCount,
  errorText,
  formatDuration,
  formatMemory,
  formatVGPUs,
  getAllocations,
  getClass,
  getPool,
  secondsSince,
  stopClassPod
} from './api';
import { Child, actionButton, h } from './dom';
import { vgpuIcon } from './icon';

const REFRESH_MS = 5_000;

/** The sidebar; it refreshes every 5 s while it is shown. */
export class VGPUPanel extends Widget {
  private readonly mine = h('div', { class: 'orion-Panel-mine' });
  private readonly pool = h('div', { class: 'orion-Panel-pool' });
  private readonly classBody = h('div', { class: 'orion-Panel-class' });
  private readonly classSection = section('Class', this.classBody);
  private readonly poll: Poll;

  constructor(private readonly kernels: Kernel.IManager) {
    super();
    this.id = 'orion-vgpu-panel';
    this.addClass('orion-Panel');
    this.title.icon = vgpuIcon;
    this.title.caption = 'vGPU: my kernels, the pool, the class';
    this.node.append(
      h('h2', { class: 'orion-Panel-title' }, 'vGPU'),
      section('My vGPU kernels', this.mine),
      section('Pool', this.pool),
      this.classSection
    );
    this.classSection.hidden = true;
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: REFRESH_MS, backoff: false },
      // Only while the panel is shown and the browser tab is visible.
      standby: () => !this.isVisible || document.hidden
    });
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  /** Fetch and render now (after a stop, or when the panel is shown). */
  async refresh(): Promise<void> {
    const [mine, pool, klass] = await Promise.allSettled([
      getAllocations(),
      getPool(),
      getClass()
    ]);
    render(this.mine, mine, kernels => this.renderMine(kernels));
    render(this.pool, pool, renderPool);
    if (klass.status === 'fulfilled' && !klass.value.instructor) {
      this.classSection.hidden = true;
    } else {
      this.classSection.hidden = false;
      render(this.classBody, klass, c => this.renderClass(c));
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private renderMine(kernels: IAllocation[]): Child[] {
    if (!kernels.length) {
      return [
        h(
          'p',
          { class: 'orion-Panel-empty' },
          'No vGPU kernels. Start one with "New vGPU notebook…".'
        )
      ];
    }
    return kernels.map(k => {
      const idle = secondsSince(k.last_activity);
      const state =
        k.execution_state === 'idle' && idle !== null
          ? `idle ${formatDuration(idle)}`
          : (k.execution_state ?? '');
      const stop = actionButton('Stop', `Shut down kernel ${k.kernel_id}`, () =>
        this.stopKernel(k.kernel_id)
      );
      return card(k.kernel_id, k.kernel_spec, stop, [
        k.path ?? 'no notebook',
        details(
          formatVGPUs(k.vgpus, k.memory_mib),
          k.node ?? k.cluster,
          k.reason ? `${k.phase} (${k.reason})` : k.phase,
          state
        )
      ]);
    });
  }

  /** Every kernel of the class: user, pod, node, vGPUs and memory, idle time. */
  private renderClass(klass: IClass): Child[] {
    if (!klass.kernels.length) {
      return [h('p', { class: 'orion-Panel-empty' }, 'No kernels in the class.')];
    }
    return klass.kernels.map(k => {
      const stop =
        k.pod &&
        actionButton('Stop', `Stop ${k.user}'s kernel pod ${k.pod}`, () =>
          this.stopPod(k)
        );
      return card(k.kernel_id, k.user || '(no user)', stop, [
        k.pod ?? `kernel ${k.kernel_id}`,
        details(
          formatVGPUs(k.vgpus, k.memory_mib),
          k.node,
          k.reason ? `${k.phase} (${k.reason})` : k.phase,
          k.idle_seconds !== null && `idle ${formatDuration(k.idle_seconds)}`
        )
      ]);
    });
  }

  private async stopKernel(id: string): Promise<void> {
    try {
      await this.kernels.shutdown(id);
    } catch (error) {
      await showErrorMessage('Could not stop the kernel', errorText(error));
    }
    await this.refresh();
  }

  private async stopPod(kernel: IClassKernel): Promise<void> {
    const answer = await showDialog({
      title: 'Stop kernel',
      body: `Stop ${kernel.user}'s kernel pod ${kernel.pod}? Unsaved work in it is lost.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
    });
    if (!answer.button.accept || !kernel.pod) {
      return;
    }
    try {
      await stopClassPod(kernel.pod);
    } catch (error) {
      await showErrorMessage('Could not stop the kernel pod', errorText(error));
    }
    await this.refresh();
  }
}

/** A kernel: its name and Stop button, then a line or two about it. */
function card(
  kernelId: string,
  name: string,
  stop: HTMLElement | null | '',
  lines: string[]
): HTMLElement {
  return h(
    'div',
    { class: 'orion-Kernel', 'data-kernel-id': kernelId },
    h(
      'div',
      { class: 'orion-Kernel-head' },
      h('span', { class: 'orion-Kernel-name' }, name),
      stop
    ),
    ...lines.map(line => h('div', { class: 'orion-Kernel-line' }, line))
  );
}

/** "1 × 3 GiB · gpu-1 · Running · idle 2 min", leaving out what is not known. */
function details(...parts: (string | null | false)[]): string {
  return parts.filter(Boolean).join(' · ');
}

function section(title: string, body: HTMLElement): HTMLElement {
  return h('section', {}, h('h3', {}, title), body);
}

/** Replace a section's content with the rendered value, or with the error's text. */
function render<T>(
  into: HTMLElement,
  result: PromiseSettledResult<T>,
  view: (value: T) => Child[]
): void {
  const children =
    result.status === 'fulfilled'
      ? view(result.value)
      : [h('p', { class: 'orion-Panel-error' }, errorText(result.reason))];
  into.replaceChildren(...children.filter((c): c is Node | string => !!c));
}

function renderPool(pool: IPool): Child[] {
  if (!pool.visible) {
    return [
      h(
        'p',
        { class: 'orion-Panel-empty' },
        'The pool size is not visible to this server (no permission to read nodes).'
      )
    ];
  }
  const count = pool.count_resource;
  const nodes = pool.nodes
    .filter(n => n.resources[count])
    .map(n =>
      h(
        'div',
        { class: 'orion-Node' },
        h('div', { class: 'orion-Node-name' }, n.name),
        bar(n.resources[count]),
        ...Object.entries(n.resources)
          .filter(([name]) => name !== count)
          .map(([name, c]) =>
            h('div', { class: 'orion-Node-other' }, other(name, c))
          )
      )
    );
  const total = pool.totals[count];
  return [
    ...(nodes.length
      ? nodes
      : [h('p', { class: 'orion-Panel-empty' }, `No node offers ${count}.`)]),
    total &&
      h(
        'div',
        { class: 'orion-Pool-total' },
        `Total: ${total.free} of ${total.allocatable} vGPUs free ` +
          `(${total.allocated} in use) · ${pool.source}`
      )
  ];
}

/** free / allocatable as a bar, with the numbers. */
function bar(c: IResourceCount): HTMLElement {
  const share = c.allocatable ? (100 * c.free) / c.allocatable : 0;
  return h(
    'div',
    { class: 'orion-Bar', title: `${c.allocated} of ${c.allocatable} in use` },
    h(
      'div',
      { class: 'orion-Bar-track' },
      h('div', { class: 'orion-Bar-free', style: `width: ${share}%` })
    ),
    h(
      'span',
      { class: 'orion-Bar-text' },
      `${c.free} of ${c.allocatable} vGPUs free`
    )
  );
}

/** Another resource of a node: "memory: 13 GiB of 16 GiB free" (memory resources count MiB). */
function other(name: string, c: IResourceCount): string {
  const memory = /mem/i.test(name);
  const label = memory ? 'memory' : (name.split('/').pop() ?? name);
  const show = memory ? formatMemory : String;
  return `${label}: ${show(c.free)} of ${show(c.allocatable)} free`;
}
