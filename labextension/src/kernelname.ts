// A notebook's kernel named by its real grant. JupyterLab names a kernel by its spec's display_name
// (the notebook toolbar, the status bar's kernel item, Notebook 7's toolbar), but "New vGPU
// notebook…" may ask a spec for more or less memory than its default: the 4 GiB spec launched with
// 8 GiB would read "Python 3 · 1 vGPU · 4 GiB" beside our "vGPU: 1 × 8 GiB". Such a kernel's name
// says what the server granted ("Python 3 · 1 vGPU · 8 GiB"); the spec and the notebook's saved
// metadata keep the spec's name, which is what the notebook gets when it next starts a kernel.
import type { IKernelStatusModel, ISessionContext } from '@jupyterlab/apputils';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { TranslationBundle } from '@jupyterlab/translation';
import type { Widget } from '@lumino/widgets';

import type { IAllocation } from './api';
import { formatAllocation } from './format';
import type { IVGPUModel } from './model';

/** A vGPU spec's default grant, as its kernel.json metadata says (kernelspecs.py kernel_json). */
export interface ISpecGrant {
  vgpus: number;
  memory_mib: number;
  compute_percent: number | null;
}

const NO_BREAK_SPACE = '\u00a0';
/** A space with a word on both sides, not one beside a " · " or " × " between phrases. */
const INSIDE_PHRASE = /(?<=[^\s·×]) (?=[^\s·×])/g;

/** As the server's vgpu.unbroken_phrases: "1 vGPU" and "4 GiB" each on one line. */
export function unbrokenPhrases(text: string): string {
  return text.replace(INSIDE_PHRASE, NO_BREAK_SPACE);
}

/** The spec's default grant from its metadata, or null for a spec that is not a vGPU spec. */
export function specGrant(metadata: unknown): ISpecGrant | null {
  const orion = (metadata as { orion_jupyter?: Partial<ISpecGrant> } | undefined)?.orion_jupyter;
  if (!orion || typeof orion.vgpus !== 'number' || typeof orion.memory_mib !== 'number') {
    return null;
  }
  return {
    vgpus: orion.vgpus,
    memory_mib: orion.memory_mib,
    compute_percent: orion.compute_percent ?? null
  };
}

/**
 * The name to show for a kernel of a spec named `specName` whose default grant is `spec`: the spec's
 * name when the server granted what the spec says (or nothing is known yet), else the spec's name with
 * its grant replaced by the real one, or (a name an instructor wrote without the grant in it) with
 * the real grant after it.
 */
export function grantedName(
  specName: string,
  spec: ISpecGrant | null,
  allocation: IAllocation | null,
  trans?: TranslationBundle
): string {
  if (!spec || !allocation) {
    return specName;
  }
  const granted = {
    vgpus: allocation.vgpus ?? 0,
    memory_mib: allocation.memory_mib ?? 0,
    compute_percent: allocation.compute_percent ?? null
  };
  const same =
    granted.vgpus === spec.vgpus &&
    (!granted.vgpus || granted.memory_mib === spec.memory_mib) &&
    granted.compute_percent === spec.compute_percent;
  if (same) {
    return specName;
  }
  const real = unbrokenPhrases(
    formatAllocation(granted.vgpus, granted.memory_mib, granted.compute_percent, trans)
  );
  const written = formatAllocation(spec.vgpus, spec.memory_mib, spec.compute_percent, trans);
  // The spec's grant in its name, whichever spaces it was written with.
  const pattern = new RegExp(
    written.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/ /g, '[ \u00a0]')
  );
  return pattern.test(specName)
    ? specName.replace(pattern, () => real)
    : `${specName} · ${real}`;
}

/**
 * Names every tracked notebook's kernel by its real grant: the session context's kernelDisplayName
 * (which JupyterLab's views read) asks the vGPU model, and the views that show it are told to read
 * it again once the model learns the kernel's grant.
 */
export class RealGrantNames {
  /** The name each context's views last showed (to tell them only when it changes). */
  private readonly shown = new WeakMap<ISessionContext, string>();

  /**
   * `kernelNameItem` makes JupyterLab's toolbar kernel name item (Toolbar.createKernelNameItem), which
   * reads the name anew only when made or when the kernel changes.
   */
  constructor(
    private readonly model: IVGPUModel,
    private readonly tracker: INotebookTracker,
    private readonly kernelStatus: IKernelStatusModel | null,
    private readonly kernelNameItem: (context: ISessionContext) => Widget,
    private readonly trans: TranslationBundle
  ) {
    // The grant is needed until known for every vGPU kernel of an open notebook (Notebook 7 has no
    // other view that polls the allocations).
    model.addInterest(() => (this.unknownGrants() ? 'allocations' : 'none'));
    model.changed.connect(this.refreshViews, this);
    tracker.forEach(panel => this.track(panel));
    tracker.widgetAdded.connect((_, panel) => this.track(panel));
  }

  private track(panel: NotebookPanel): void {
    const context = panel.sessionContext;
    const specName = inheritedGetter(context, 'kernelDisplayName');
    if (!specName) {
      return; // not JupyterLab's SessionContext: leave it as it is
    }
    Object.defineProperty(context, 'kernelDisplayName', {
      configurable: true,
      get: () => this.name(context, specName.call(context) as string)
    });
    context.kernelChanged.connect(() => {
      const id = context.session?.kernel?.id;
      if (id && this.vgpuSpec(context) && !this.model.allocation(id)) {
        void this.model.refresh();
      }
    });
  }

  /** `specName` is what JupyterLab would show; for a vGPU kernel, the real grant. */
  private name(context: ISessionContext, specName: string): string {
    const kernel = context.session?.kernel;
    const spec = this.vgpuSpec(context);
    // (while another spec is pending, specName is that spec's name: this kernel's grant is not it)
    if (!kernel || !spec || spec.display_name !== specName) {
      return specName;
    }
    return grantedName(specName, spec.grant, this.model.allocation(kernel.id), this.trans);
  }

  private vgpuSpec(context: ISessionContext): { display_name: string; grant: ISpecGrant } | null {
    const name = context.session?.kernel?.name;
    const spec = name ? context.specsManager.specs?.kernelspecs[name] : undefined;
    const grant = specGrant(spec?.metadata);
    return spec && grant ? { display_name: spec.display_name, grant } : null;
  }

  private unknownGrants(): boolean {
    let unknown = false;
    this.tracker.forEach(panel => {
      const id = panel.sessionContext.session?.kernel?.id;
      unknown ||= !!id && !!this.vgpuSpec(panel.sessionContext) && !this.model.allocation(id);
    });
    return unknown;
  }

  /** Tells the views of each notebook whose kernel's name changed to read it again. */
  private refreshViews(): void {
    let current = false;
    this.tracker.forEach(panel => {
      const context = panel.sessionContext;
      const name = context.kernelDisplayName;
      if (this.shown.get(context) === name) {
        return;
      }
      this.shown.set(context, name);
      // The toolbar's kernel name renders on kernelChanged only: a new one in its place.
      const toolbar = panel.toolbar;
      const index = [...toolbar.children()].findIndex(item => item.hasClass('jp-KernelName'));
      if (index >= 0) {
        [...toolbar.children()][index].dispose();
        toolbar.insertItem(index, 'kernelName', this.kernelNameItem(context));
      }
      current ||= panel === this.tracker.currentWidget;
    });
    if (current && this.kernelStatus) {
      // JupyterLab's kernel status item reads the name when its session context is set, which adding
      // a session provider does for the current widget. Twice: its model emits a change only when a
      // set leaves its state as it was (the first set takes the new name, the second shows it).
      this.kernelStatus.addSessionProvider(noSession);
      this.kernelStatus.addSessionProvider(noSession);
    }
  }
}

/** The getter `object` inherits for `property` (a class's), if any. */
function inheritedGetter(object: object, property: string): (() => unknown) | undefined {
  for (let proto = Object.getPrototypeOf(object); proto; proto = Object.getPrototypeOf(proto)) {
    const descriptor = Object.getOwnPropertyDescriptor(proto, property);
    if (descriptor) {
      return descriptor.get;
    }
  }
  return undefined;
}

/** A session provider that provides none (the notebook's own provider answers for notebooks). */
const noSession = (): null => null;
