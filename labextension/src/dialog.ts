// "New vGPU notebook…": a JupyterLab dialog whose body (getValue) holds the kernel spec, the memory
// and the vGPUs; Start checks the values as the server does, starts the kernel in the file browser's
// folder (its progress in a notification, with its place in the queue while it waits for a vGPU),
// then opens a new notebook there on that kernel. A value the server (or the check) refuses brings
// the dialog back with the values and the reason; a launch whose place was given up just ends.
import { Dialog, showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import {
  APIError,
  IKernelRequest,
  ISpec,
  IStartedKernel,
  errorText,
  getPool,
  getSpecs,
  isCancelled,
  startKernel
} from './api';
import { h } from './dom';
import { formatAllocation, formatMib, memoryQuantity, parseMemory } from './format';
import { ILaunchContext, currentFolder, openOnKernel, serverPath, withProgress } from './launch';
import { ILaunchValues, checkLaunch, nothingCanStart, queueNote } from './validate';

const SLIDER_STEP_MIB = 256;

/** A refusal to show in the dialog: the message and the field it names. */
interface IRefusal {
  message: string;
  field?: string;
}

/** Runs the whole flow: the dialog (again after a refusal), the kernel, the new notebook. */
export async function newVGPUNotebook(ctx: ILaunchContext): Promise<void> {
  const { trans } = ctx;
  let specs: ISpec[];
  try {
    specs = await getSpecs();
  } catch (error) {
    await showErrorMessage(trans.__('Could not list the vGPU kernel specs'), errorText(error));
    return;
  }
  if (!specs.length) {
    await showErrorMessage(
      trans.__('No vGPU kernel specs'),
      trans.__('No vGPU kernel spec is installed on this server; ask your administrator.')
    );
    return;
  }
  let values: ILaunchValues | null = null;
  let refusal: IRefusal | null = null;
  const blocked = nothingCanStart(specs, trans);
  const queue = blocked ? '' : queueNote(specs, await getPool().catch(() => null), trans);
  for (;;) {
    const form: LaunchForm = new LaunchForm(specs, trans, ctx.model.sliderMaxMib, values, refusal);
    form.showBlocked(blocked || queue);
    const dialog: Dialog<ILaunchValues> = new Dialog<ILaunchValues>({
      title: trans.__('New vGPU notebook'),
      body: form,
      buttons: [
        Dialog.cancelButton(),
        Dialog.okButton({ label: queue ? trans.__('Wait in the queue') : trans.__('Start') })
      ],
      focusNodeSelector: refusal?.field
        ? 'input.orion-mod-refused'
        : 'input[name="orion-spec"]:checked'
    });
    dialog.addClass('orion-LaunchDialog');
    if (blocked) {
      // Start says why it cannot (its tooltip); Enter does not start either (below).
      const start = dialog.node.querySelector<HTMLButtonElement>('.jp-Dialog-footer .jp-mod-accept');
      if (start) {
        start.disabled = true;
        start.title = blocked;
      }
    }
    const result: Dialog.IResult<ILaunchValues> = await dialog.launch();
    if (!result.button.accept || !result.value || blocked) {
      return;
    }
    const typed: ILaunchValues = result.value;
    values = typed;
    const check = checkLaunch(typed, trans);
    if (check.request === undefined) {
      refusal = { message: check.message, field: check.field };
      continue;
    }
    const request = check.request;
    const title = trans.__(
      'Starting a vGPU kernel: %1',
      formatAllocation(request.vgpus, parseMemory(request.memory ?? '0'), null, trans)
    );
    let kernel;
    try {
      kernel = await startInFolder(ctx, request, title);
    } catch (error) {
      if (isCancelled(error)) {
        return; // its place in the queue was given up (the notification's Cancel): done
      }
      // 400 names the field, 409 the short resource: nothing was created; the dialog says why.
      refusal = {
        message: errorText(error),
        field: error instanceof APIError ? error.field : undefined
      };
      continue;
    }
    await openNewNotebook(ctx, kernel);
    return;
  }
}

/**
 * A vGPU spec's item in Notebook 7's New menu: its kernel is started first (progress and queue as in
 * the dialog), then a new notebook opens on it. A refusal (a full pool) says why and leaves nothing
 * behind, where Notebook 7's own item would open an empty notebook on no kernel without a word.
 */
export async function newNotebookOnSpec(
  ctx: ILaunchContext,
  spec: { name: string; display_name: string; vgpus: number }
): Promise<void> {
  const { trans } = ctx;
  let kernel;
  try {
    kernel = await startInFolder(
      ctx,
      { spec: spec.name, vgpus: spec.vgpus },
      trans.__('Starting %1…', spec.display_name)
    );
  } catch (error) {
    if (!isCancelled(error)) {
      await showErrorMessage(trans.__('Could not start %1', spec.display_name), errorText(error));
    }
    return;
  }
  await openNewNotebook(ctx, kernel);
}

/** Starts a kernel in the file browser's folder, its progress shown; a refusal throws. */
function startInFolder(
  ctx: ILaunchContext,
  request: IKernelRequest,
  title: string
): Promise<IStartedKernel> {
  const path = serverPath(ctx, currentFolder(ctx));
  return withProgress(ctx, title, kernelId => startKernel({ ...request, path, kernel_id: kernelId }));
}

/** A new notebook in the file browser's folder, opened on the kernel just started. */
async function openNewNotebook(ctx: ILaunchContext, kernel: IStartedKernel): Promise<void> {
  void ctx.model.refresh();
  const folder = currentFolder(ctx);
  try {
    const notebook = await (ctx.docManager
      ? ctx.docManager.newUntitled({ path: folder, type: 'notebook' })
      : ctx.app.serviceManager.contents.newUntitled({ path: folder, type: 'notebook' }));
    await openOnKernel(ctx, notebook.path, kernel);
  } catch (error) {
    await showErrorMessage(
      ctx.trans.__('The vGPU kernel runs, but its notebook could not be opened'),
      errorText(error)
    );
  }
}

/** The dialog's body: spec list, memory (text and slider), vGPUs, and a refusal. */
export class LaunchForm extends Widget {
  private readonly memory = h('input', { type: 'text', name: 'memory' });
  private readonly memoryHint = h('span', { class: 'orion-LaunchForm-hint' });
  private readonly slider = h('input', { type: 'range' });
  private readonly vgpus = h('input', { type: 'number', name: 'vgpus', min: '0' });
  private readonly error = h('div', { class: 'orion-LaunchForm-error', role: 'alert' });
  private readonly blocked = h('div', { class: 'orion-LaunchForm-blocked', role: 'status' });

  constructor(
    specs: ISpec[],
    private readonly trans: TranslationBundle,
    private readonly sliderMaxMib: number,
    values: ILaunchValues | null = null,
    refusal: IRefusal | null = null
  ) {
    super();
    this.addClass('orion-LaunchForm');
    this.memory.placeholder = trans.__('e.g. 4Gi or 4096 (MiB)');
    this.slider.setAttribute('aria-label', trans.__('vGPU memory'));
    this.slider.min = String(SLIDER_STEP_MIB);
    this.slider.step = String(SLIDER_STEP_MIB);
    this.slider.max = String(sliderMaxMib);
    this.memory.oninput = () => this.syncSlider();
    this.slider.oninput = () => {
      this.memory.value = memoryQuantity(Number(this.slider.value));
      this.syncSlider();
    };
    this.blocked.hidden = true;
    this.node.append(
      this.blocked,
      h(
        'fieldset',
        { class: 'orion-LaunchForm-specs' },
        h('legend', {}, trans.__('Kernel spec')),
        ...specs.map(s => this.specOption(s))
      ),
      h(
        'label',
        { class: 'orion-LaunchForm-field' },
        trans.__('vGPU memory (per vGPU)') + ' ',
        this.memory,
        this.memoryHint
      ),
      this.slider,
      h('label', { class: 'orion-LaunchForm-field' }, trans.__('vGPUs') + ' ', this.vgpus),
      this.error
    );
    const chosen =
      specs.find(s => s.name === values?.spec) ??
      specs.find(s => s.can_start !== false && !s.error);
    if (chosen) {
      this.choose(chosen);
    }
    if (values) {
      this.memory.value = values.memory;
      this.vgpus.value = values.vgpus;
      this.syncSlider();
    }
    this.showError(refusal?.message ?? '', refusal?.field);
  }

  /** Why nothing can start now ('' hides it). */
  showBlocked(reason: string): void {
    this.blocked.textContent = reason;
    this.blocked.hidden = !reason;
  }

  /** The values as typed; the dialog's result. */
  getValue(): ILaunchValues {
    const spec = this.node.querySelector<HTMLInputElement>('input[name="orion-spec"]:checked');
    return { spec: spec?.value ?? null, memory: this.memory.value, vgpus: this.vgpus.value };
  }

  /** The message; the field it names (memory, vgpus, spec) is marked. */
  private showError(message: string, field?: string): void {
    this.error.textContent = message;
    this.error.hidden = !message;
    for (const input of this.node.querySelectorAll('input')) {
      const named = !!field && (input.name === field || input.name === `orion-${field}`);
      input.classList.toggle('orion-mod-refused', named);
    }
  }

  private specOption(spec: ISpec): HTMLElement {
    const trans = this.trans;
    const unavailable = spec.error
      ? spec.error
      : spec.can_start === false
        ? trans.__('not enough vGPUs free right now')
        : '';
    const radio = h('input', { type: 'radio', name: 'orion-spec', value: spec.name });
    radio.disabled = !!unavailable;
    radio.onchange = () => this.choose(spec);
    return h(
      'label',
      {
        class: `orion-SpecOption${unavailable ? ' orion-mod-unavailable' : ''}`,
        title: spec.why_not || unavailable || spec.name
      },
      radio,
      h('span', { class: 'orion-SpecOption-name' }, spec.display_name),
      h(
        'span',
        { class: 'orion-SpecOption-detail' },
        [spec.description, unavailable && trans.__('unavailable: %1', unavailable)]
          .filter(Boolean)
          .join(' · ')
      )
    );
  }

  private choose(spec: ISpec): void {
    const radio = this.node.querySelector<HTMLInputElement>(
      `input[name="orion-spec"][value="${CSS.escape(spec.name)}"]`
    );
    if (radio) {
      radio.checked = true;
    }
    this.memory.value = spec.memory_mib ? memoryQuantity(spec.memory_mib) : '';
    this.vgpus.value = String(spec.vgpus ?? 1);
    this.syncSlider();
  }

  private syncSlider(): void {
    const mib = parseMemory(this.memory.value);
    if (mib !== null) {
      // A spec (or a typed value) above the setting's maximum still fits on the slider.
      this.slider.max = String(Math.max(this.sliderMaxMib, mib));
      this.slider.value = String(mib);
    }
    this.memoryHint.textContent = mib === null ? '' : `= ${formatMib(mib)}`;
  }
}
