// The "vGPU" sidebar: my vGPU kernels (with the memory they use, and "idle: stops at 10:42 · Keep"
// when the server is about to stop one for being idle), my parked notebooks (Resume, Delete), the
// pool, and for instructors the class,
// sortable by waste, each kernel with Exempt (from idle stopping), Park and Stop, "Park all of
// <course>", and per student the kernels parked. It shows the shared
// model, which polls while the panel is shown.
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Kernel } from '@jupyterlab/services';
import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import {
  IAllocation,
  IClass,
  IClassKernel,
  IPool,
  IResourceCount,
  errorText,
  setExempt,
  stopClassPod
} from './api';
import { renderBudgetLine, renderBudgetRows } from './budget';
import { parkButton, renderCourseParks, renderParkedCounts } from './classpark';
import { cullWarning } from './culling';
import { Child, actionButton, h } from './dom';
import {
  byWaste,
  formatAllocation,
  formatBytes,
  formatDuration,
  formatMib,
  formatShort,
  grantedBytes,
  secondsSince,
  wasteBytes
} from './format';
import { vgpuIcon } from './icon';
import { IVGPUModel, Part } from './model';
import { Parking, renderParked } from './park';

type ClassOrder = 'user' | 'waste';

/** The sidebar; it re-renders whenever the model changes. */
export class VGPUPanel extends Widget {
  private readonly mine = h('div', { class: 'orion-Panel-mine' });
  private readonly pool = h('div', { class: 'orion-Panel-pool' });
  private readonly parked = h('div', { class: 'orion-Panel-parked' });
  private readonly parkedSection: HTMLElement;
  private readonly classBody = h('div', { class: 'orion-Panel-class' });
  private readonly budgetLine = h('div', { class: 'orion-Panel-budget' });
  private readonly classBudgets = h('div', { class: 'orion-Panel-budgets' });
  private readonly classParks = h('div', { class: 'orion-Panel-classParks' });
  private readonly classOrder = h('select', {
    class: 'jp-mod-styled orion-Panel-classOrder',
    name: 'orion-class-order'
  });
  private readonly classSection: HTMLElement;
  private readonly toDispose: { dispose(): void }[] = [];
  /** What exempt answered, for class rows that do not say (another user's kernel). */
  private readonly exempted = new Map<string, boolean>();

  constructor(
    private readonly model: IVGPUModel,
    private readonly kernels: Kernel.IManager,
    private readonly trans: TranslationBundle,
    private readonly parking: Parking | null = null
  ) {
    super();
    this.id = 'orion-vgpu-panel';
    this.addClass('orion-Panel');
    this.title.icon = vgpuIcon;
    this.title.caption = trans.__('vGPU: my kernels, the pool, the class');
    this.classOrder.setAttribute('aria-label', trans.__('Order of the class'));
    this.classOrder.append(
      h('option', { value: 'user' }, trans.__('by user')),
      h('option', { value: 'waste' }, trans.__('by waste'))
    );
    this.classOrder.title = trans.__(
      'By waste: the most vGPU memory granted and not used first, then the longest idle'
    );
    this.classOrder.onchange = () => this.render();
    this.classSection = section(trans.__('Class'), this.classBody, this.classOrder);
    this.classSection.append(this.classParks, this.classBudgets);
    this.parkedSection = section(trans.__('Parked notebooks'), this.parked);
    this.node.append(
      h('h2', { class: 'orion-Panel-title' }, trans.__('vGPU')),
      this.budgetLine,
      section(trans.__('My vGPU kernels'), this.mine),
      this.parkedSection,
      section(trans.__('Pool'), this.pool),
      this.classSection
    );
    this.classSection.hidden = true;
    model.changed.connect(this.render, this);
    parking?.changed.connect(this.render, this);
    // The pool and the class are fetched only while the panel is shown.
    this.toDispose.push(model.addInterest(() => (this.isVisible ? 'all' : 'none')));
    this.render();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this.render, this);
    this.parking?.changed.disconnect(this.render, this);
    this.toDispose.forEach(d => d.dispose());
    super.dispose();
  }

  protected onAfterShow(): void {
    void this.model.refresh();
  }

  private render(): void {
    const { model, trans } = this;
    fill(this.mine, model.allocations, trans, kernels => this.renderMine(kernels));
    fill(this.pool, model.pool, trans, pool => renderPool(pool, trans));
    // Shown where the server keeps snapshots (not on a backend without them).
    const parking = this.parking;
    this.parkedSection.hidden = !parking || !model.canPark;
    if (parking) {
      fill(this.parked, model.snapshots, trans, s => renderParked(s, parking, trans));
    }
    const klass = model.classKernels;
    const shown = klass?.status === 'fulfilled' ? klass.value : null;
    // Students see no class section; an error in it is shown (it may be the instructor's).
    this.classSection.hidden = klass?.status !== 'rejected' && !shown?.instructor;
    fill(this.classBody, klass, trans, c => this.renderClass(c));
    renderBudgetLine(this.budgetLine, model.budget, trans);
    this.classBudgets.replaceChildren(
      ...renderBudgetRows(shown?.budgets, !!shown?.instructor, model, trans)
    );
    const refresh = () => model.refresh();
    this.classParks.replaceChildren(
      ...renderCourseParks(shown?.kernels ?? [], !!shown?.instructor, refresh, trans),
      ...renderParkedCounts(shown?.instructor ? shown.parked : [], trans)
    );
    this.classOrder.hidden = !shown?.kernels.length;
  }

  private renderMine(kernels: IAllocation[]): Child[] {
    const trans = this.trans;
    if (!kernels.length) {
      return [
        h(
          'p',
          { class: 'orion-Panel-empty' },
          trans.__('No vGPU kernels. Start one with "New vGPU notebook…".')
        )
      ];
    }
    return kernels.map(k => {
      const idle = secondsSince(k.last_activity);
      const state =
        k.execution_state === 'idle' && idle !== null
          ? trans.__('idle %1', formatDuration(idle, trans))
          : (k.execution_state ?? '');
      const label = k.label ?? formatAllocation(k.vgpus, k.memory_mib, k.compute_percent, trans);
      const stop = actionButton(
        trans.__('Stop'),
        trans.__('Shut down kernel %1', k.kernel_id),
        () => this.stopKernel(k.kernel_id, `${k.path ?? k.kernel_id} (${label})`)
      );
      const warning = cullWarning(k, this.model, trans);
      return card(k.kernel_id, k.kernel_spec, label, stop, [
        k.path ?? trans.__('no notebook'),
        details(
          formatShort(k.vgpus, k.memory_mib, trans),
          k.node ?? k.cluster,
          phase(k),
          state,
          !!k.exempt && trans.__('exempt from idle stopping')
        ),
        warning && h('div', { class: 'orion-Kernel-line orion-mod-warning' }, warning),
        usage(k, trans)
      ]);
    });
  }

  /** Every kernel of the class: user, pod, node, vGPUs and memory (used), idle time. */
  private renderClass(klass: IClass): Child[] {
    const trans = this.trans;
    if (!klass.kernels.length) {
      return [h('p', { class: 'orion-Panel-empty' }, trans.__('No kernels in the class.'))];
    }
    const order = this.classOrder.value as ClassOrder;
    const kernels = [...klass.kernels].sort(
      order === 'waste'
        ? byWaste
        : (a, b) => a.user.localeCompare(b.user) || a.kernel_id.localeCompare(b.kernel_id)
    );
    return kernels.map(k => {
      const stop =
        k.pod &&
        actionButton(
          trans.__('Stop'),
          trans.__("Stop %1's kernel pod %2", k.user, k.pod),
          () => this.stopPod(k)
        );
      const waste = wasteBytes(k);
      const label = k.label ?? formatAllocation(k.vgpus, k.memory_mib, null, trans);
      // Instructors park any vGPU kernel of the class (hub mode: the broker decides, with their token).
      const park =
        (k.vgpus ?? 0) > 0 && parkButton(k, () => this.model.refresh(), trans);
      const tools = klass.instructor
        ? h('span', { class: 'orion-Kernel-tools' }, this.exemptButton(k), park, stop)
        : stop;
      return card(k.kernel_id, k.user || trans.__('(no user)'), label, tools, [
        k.pod ?? trans.__('kernel %1', k.kernel_id),
        details(
          formatShort(k.vgpus, k.memory_mib, trans),
          k.node,
          phase(k),
          k.idle_seconds !== null && trans.__('idle %1', formatDuration(k.idle_seconds, trans)),
          waste !== null && grantedBytes(k) > 0 && trans.__('%1 unused', formatBytes(waste))
        ),
        usage(k, trans)
      ]);
    });
  }

  /** Whether a class kernel is exempt: its row says, else this server's own row, else the last toggle. */
  private isExempt(k: IClassKernel): boolean {
    return k.exempt ?? this.model.allocation(k.kernel_id)?.exempt ?? this.exempted.get(k.kernel_id) ?? false;
  }

  /** Instructors: "Exempt" spares the kernel from idle stopping, "Un-exempt" undoes it. */
  private exemptButton(k: IClassKernel): HTMLElement {
    const trans = this.trans;
    const exempt = this.isExempt(k);
    const button = actionButton(
      exempt ? trans.__('Un-exempt') : trans.__('Exempt'),
      exempt
        ? trans.__("Stop %1's kernel again when it stays idle", k.user)
        : trans.__("Never stop %1's kernel for being idle", k.user),
      () => this.toggleExempt(k, !exempt),
      'plain'
    );
    button.classList.add('orion-ExemptButton');
    button.setAttribute('aria-pressed', String(exempt));
    return button;
  }

  private async toggleExempt(k: IClassKernel, exempt: boolean): Promise<void> {
    try {
      const answer = await setExempt(k.kernel_id, exempt);
      this.exempted.set(k.kernel_id, answer.exempt);
    } catch (error) {
      await showErrorMessage(
        exempt
          ? this.trans.__('Could not exempt the kernel')
          : this.trans.__('Could not un-exempt the kernel'),
        errorText(error)
      );
    }
    this.render();
    await this.model.refresh();
  }

  /**
   * Stop asks first, as the class view does: a stopped kernel's variables and running cells are
   * gone, and no undo could bring them back (a new kernel would start empty).
   */
  private async stopKernel(id: string, what: string): Promise<void> {
    const trans = this.trans;
    const answer = await showDialog({
      title: trans.__('Stop vGPU kernel'),
      body: trans.__(
        'Stop %1? Its variables and any running cell are lost; its vGPU is freed for others.',
        what
      ),
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: trans.__('Stop') })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await this.kernels.shutdown(id);
    } catch (error) {
      await showErrorMessage(this.trans.__('Could not stop the kernel'), errorText(error));
    }
    await this.model.refresh();
  }

  private async stopPod(kernel: IClassKernel): Promise<void> {
    const trans = this.trans;
    const answer = await showDialog({
      title: trans.__('Stop kernel'),
      body: trans.__(
        "Stop %1's kernel pod %2? Unsaved work in it is lost.",
        kernel.user,
        kernel.pod ?? ''
      ),
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: trans.__('Stop') })]
    });
    if (!answer.button.accept || !kernel.pod) {
      return;
    }
    try {
      await stopClassPod(kernel.pod);
    } catch (error) {
      await showErrorMessage(trans.__('Could not stop the kernel pod'), errorText(error));
    }
    await this.model.refresh();
  }
}

function phase(k: { phase: string; reason: string }): string {
  return k.reason ? `${k.phase} (${k.reason})` : k.phase;
}

/** A kernel: its name and Stop button, then a line or two about it; its allocation on hover. */
function card(
  kernelId: string,
  name: string,
  label: string,
  stop: HTMLElement | null | '',
  lines: (string | HTMLElement | null | false)[]
): HTMLElement {
  return h(
    'div',
    { class: 'orion-Kernel', 'data-kernel-id': kernelId, title: label },
    h(
      'div',
      { class: 'orion-Kernel-head' },
      h('span', { class: 'orion-Kernel-name' }, name),
      stop
    ),
    ...lines.map(line =>
      typeof line === 'string' ? h('div', { class: 'orion-Kernel-line' }, line) : line
    )
  );
}

/** "1 × 3 GiB · gpu-1 · Running · idle 2 min", leaving out what is not known. */
function details(...parts: (string | null | false)[]): string {
  return parts.filter(Boolean).join(' · ');
}

function section(title: string, body: HTMLElement, tool?: HTMLElement): HTMLElement {
  return h('section', {}, h('div', { class: 'orion-Panel-heading' }, h('h3', {}, title), tool), body);
}

/** Replace a section's content with the rendered value, the error's text, or "Loading…". */
function fill<T>(
  into: HTMLElement,
  part: Part<T>,
  trans: TranslationBundle,
  view: (value: T) => Child[]
): void {
  const children =
    part === null
      ? [h('p', { class: 'orion-Panel-empty' }, trans.__('Loading…'))]
      : part.status === 'fulfilled'
        ? view(part.value)
        : [h('p', { class: 'orion-Panel-error' }, errorText(part.reason))];
  into.replaceChildren(...children.filter((c): c is Node | string => !!c));
}

/**
 * Memory used of memory granted, as a bar: "1.2 GiB of 3 GiB used". Nothing from a server that
 * does not measure it; a note when this kernel's use is not known.
 */
function usage(
  k: {
    vgpus: number | null;
    memory_mib: number | null;
    memory_used?: number | null;
    memory_sampled_at?: string | null;
  },
  trans: TranslationBundle
): HTMLElement | null {
  const granted = grantedBytes(k);
  if (k.memory_used === undefined || !granted) {
    return null;
  }
  if (k.memory_used === null) {
    return h(
      'div',
      { class: 'orion-Kernel-line orion-Usage orion-mod-unknown' },
      trans.__('vGPU memory in use: not measured')
    );
  }
  const share = Math.min(100, (100 * k.memory_used) / granted);
  const age = secondsSince(k.memory_sampled_at);
  return h(
    'div',
    {
      class: 'orion-Bar orion-Usage',
      title:
        age === null
          ? trans.__('vGPU memory in use')
          : trans.__('vGPU memory in use, measured %1 ago', formatDuration(age, trans))
    },
    h(
      'div',
      { class: 'orion-Bar-track' },
      h('div', { class: 'orion-Usage-used', style: `width: ${share}%` })
    ),
    h(
      'span',
      { class: 'orion-Bar-text' },
      trans.__('%1 of %2 used', formatBytes(k.memory_used), formatMib(granted / (1024 * 1024)))
    )
  );
}

function renderPool(pool: IPool, trans: TranslationBundle): Child[] {
  if (!pool.visible) {
    return [
      h(
        'p',
        { class: 'orion-Panel-empty' },
        trans.__('The pool size is not visible to this server (no permission to read nodes).')
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
        bar(n.resources[count], trans),
        ...Object.entries(n.resources)
          .filter(([name]) => name !== count)
          .map(([name, c]) => h('div', { class: 'orion-Node-other' }, other(name, c, trans)))
      )
    );
  const total = pool.totals[count];
  return [
    ...(nodes.length
      ? nodes
      : [h('p', { class: 'orion-Panel-empty' }, trans.__('No node offers %1.', count))]),
    total &&
      h(
        'div',
        { class: 'orion-Pool-total' },
        trans.__(
          'Total: %1 of %2 vGPUs free (%3 in use) · %4',
          total.free,
          total.allocatable,
          total.allocated,
          pool.source
        )
      )
  ];
}

/** free / allocatable as a bar, with the numbers. */
function bar(c: IResourceCount, trans: TranslationBundle): HTMLElement {
  const share = c.allocatable ? (100 * c.free) / c.allocatable : 0;
  return h(
    'div',
    {
      class: 'orion-Bar',
      title: trans.__('%1 of %2 in use', c.allocated, c.allocatable)
    },
    h(
      'div',
      { class: 'orion-Bar-track' },
      h('div', { class: 'orion-Bar-free', style: `width: ${share}%` })
    ),
    h(
      'span',
      { class: 'orion-Bar-text' },
      trans.__('%1 of %2 vGPUs free', c.free, c.allocatable)
    )
  );
}

/** Another resource of a node: "memory: 13 GiB of 16 GiB free" (memory resources count MiB). */
function other(name: string, c: IResourceCount, trans: TranslationBundle): string {
  const memory = /mem/i.test(name);
  const label = memory ? trans.__('memory') : (name.split('/').pop() ?? name);
  const show = memory ? formatMib : String;
  return trans.__('%1: %2 of %3 free', label, show(c.free), show(c.allocatable));
}
