// "New vGPU notebook…": choose a vGPU kernel spec, memory and vGPUs; start the kernel while
// showing its launch progress, then open a new notebook on it.
import { Dialog, showErrorMessage } from '@jupyterlab/apputils';
import { JupyterFrontEnd } from '@jupyterlab/application';
import { UUID } from '@lumino/coreutils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  APIError,
  IEvent,
  IKernelRequest,
  ISpec,
  IStartedKernel,
  errorText,
  formatMemory,
  getEvents,
  getSpecs,
  memoryQuantity,
  parseMemory,
  startKernel
} from './api';
import { h } from './dom';

const EVENTS_MS = 500;
const SLIDER_MAX_MIB = 32 * 1024;
const SLIDER_STEP_MIB = 256;
const START = 1; // the index of the dialog's "Start" button

/** Runs the whole flow: the dialog, then the new notebook on the started kernel. */
export async function newVGPUNotebook(app: JupyterFrontEnd): Promise<void> {
  let specs: ISpec[];
  try {
    specs = await getSpecs();
  } catch (error) {
    await showErrorMessage(
      'Could not list the vGPU kernel specs',
      errorText(error)
    );
    return;
  }
  if (!specs.length) {
    await showErrorMessage(
      'No vGPU kernel specs',
      'No vGPU kernel spec is installed on this server; ask your administrator.'
    );
    return;
  }
  const result = await new LaunchDialog(new LaunchForm(specs)).launch();
  const kernel = result.value;
  if (!result.button.accept || !kernel) {
    return;
  }
  const notebook = await app.serviceManager.contents.newUntitled({
    type: 'notebook',
    path: ''
  });
  // The notebook's session attaches to the kernel just started (its id is the kernel preference).
  await app.commands.execute('docmanager:open', {
    path: notebook.path,
    factory: 'Notebook',
    kernel: { id: kernel.id, name: kernel.name }
  });
}

/** A dialog whose "Start" stays open until the kernel runs, and shows the server's refusal. */
class LaunchDialog extends Dialog<IStartedKernel | null> {
  private starting = false;

  constructor(private readonly form: LaunchForm) {
    super({
      title: 'New vGPU notebook',
      body: form,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Start' })],
      focusNodeSelector: 'input[name="orion-spec"]:checked'
    });
    this.addClass('orion-LaunchDialog');
  }

  resolve(index?: number): void {
    const accept = (index ?? START) === START;
    if (this.starting) {
      return; // the kernel is on its way; the dialog closes when it runs (or says why not)
    }
    if (!accept || this.form.kernel) {
      super.resolve(index);
      return;
    }
    void this.start();
  }

  reject(): void {
    if (!this.starting) {
      super.reject();
    }
  }

  private async start(): Promise<void> {
    const request = this.form.request();
    if (!request) {
      return;
    }
    this.setStarting(true);
    const events = new Poll({
      factory: () => this.form.followEvents(request.kernel_id),
      frequency: { interval: EVENTS_MS, backoff: false }
    });
    let refusal: unknown = null;
    try {
      this.form.kernel = await startKernel(request);
    } catch (error) {
      refusal = error; // 400 names the field, 409 the vGPU shortage: nothing was created
    }
    events.dispose();
    this.setStarting(false);
    if (this.form.kernel) {
      this.resolve(START);
    } else {
      const field = refusal instanceof APIError ? refusal.field : undefined;
      this.form.showError(errorText(refusal), field);
    }
  }

  private setStarting(starting: boolean): void {
    this.starting = starting;
    this.form.setBusy(starting);
    const buttons = this.node.querySelectorAll<HTMLButtonElement>('.jp-Dialog-button');
    for (const button of buttons) {
      button.disabled = starting;
    }
  }
}

/** The dialog's body: spec list, memory, vGPUs, launch progress and errors. */
class LaunchForm extends Widget {
  /** Set once the server has started the kernel: the dialog's value. */
  kernel: IStartedKernel | null = null;

  private readonly memory = h('input', { type: 'text', name: 'memory' });
  private readonly memoryHint = h('span', { class: 'orion-LaunchForm-hint' });
  private readonly slider = h('input', {
    type: 'range',
    'aria-label': 'vGPU memory'
  });
  private readonly vgpus = h('input', { type: 'number', name: 'vgpus', min: '0' });
  private readonly progress = h('ul', { class: 'orion-LaunchForm-progress' });
  private readonly busy = h('li', {}, 'Starting the kernel…');
  private readonly error = h('div', {
    class: 'orion-LaunchForm-error',
    role: 'alert'
  });
  private lastEvent = 0;

  constructor(specs: ISpec[]) {
    super();
    this.addClass('orion-LaunchForm');
    this.memory.placeholder = 'e.g. 4Gi or 4096 (MiB)';
    this.slider.min = String(SLIDER_STEP_MIB);
    this.slider.max = String(SLIDER_MAX_MIB);
    this.slider.step = String(SLIDER_STEP_MIB);
    this.memory.oninput = () => this.syncSlider();
    this.slider.oninput = () => {
      this.memory.value = memoryQuantity(Number(this.slider.value));
      this.syncSlider();
    };
    this.node.append(
      h(
        'fieldset',
        { class: 'orion-LaunchForm-specs' },
        h('legend', {}, 'Kernel spec'),
        ...specs.map(s => this.specOption(s))
      ),
      h(
        'label',
        { class: 'orion-LaunchForm-field' },
        'vGPU memory (per vGPU) ',
        this.memory,
        this.memoryHint
      ),
      this.slider,
      h('label', { class: 'orion-LaunchForm-field' }, 'vGPUs ', this.vgpus),
      this.progress,
      this.error
    );
    this.showError('');
    const first = specs.find(s => s.can_start !== false && !s.error);
    if (first) {
      this.choose(first);
    }
  }

  getValue(): IStartedKernel | null {
    return this.kernel;
  }

  /** What to POST, or null (with the reason shown) when the form is not complete. */
  request(): IKernelRequest | null {
    this.showError('');
    this.progress.replaceChildren();
    const spec = this.node.querySelector<HTMLInputElement>(
      'input[name="orion-spec"]:checked'
    );
    if (!spec) {
      this.showError('Choose a kernel spec.');
      return null;
    }
    // The server checks the values and names the field it refuses.
    return {
      spec: spec.value,
      memory: this.memory.value.trim(),
      vgpus: Number(this.vgpus.value),
      kernel_id: UUID.uuid4()
    };
  }

  /** Shows the launch messages that arrived since the last call. */
  async followEvents(kernelId: string): Promise<void> {
    let events: IEvent[];
    try {
      events = await getEvents(kernelId, this.lastEvent);
    } catch {
      return; // not known to the server yet: the kernel is still being checked
    }
    for (const event of events) {
      this.lastEvent = Math.max(this.lastEvent, event.seq);
      const level = `orion-Event orion-Event-${event.level}`;
      this.busy.before(h('li', { class: level }, event.message));
    }
  }

  setBusy(busy: boolean): void {
    for (const input of this.node.querySelectorAll('input')) {
      input.disabled = busy || input.dataset.unavailable === 'true';
    }
    if (busy) {
      this.lastEvent = 0;
      this.progress.append(this.busy);
    } else {
      this.busy.remove();
    }
  }

  /** The server's message; the field it names (memory, vgpus, spec) is marked. */
  showError(message: string, field?: string): void {
    this.error.textContent = message;
    this.error.hidden = !message;
    for (const input of this.node.querySelectorAll('input')) {
      const named =
        !!field && (input.name === field || input.name === `orion-${field}`);
      input.classList.toggle('orion-mod-refused', named);
    }
    this.node.querySelector<HTMLInputElement>('input.orion-mod-refused')?.focus();
  }

  private specOption(spec: ISpec): HTMLElement {
    const unavailable = spec.error
      ? spec.error
      : spec.can_start === false
        ? 'not enough vGPUs free right now'
        : '';
    const radio = h('input', {
      type: 'radio',
      name: 'orion-spec',
      value: spec.name
    });
    radio.disabled = !!unavailable;
    radio.dataset.unavailable = String(!!unavailable);
    radio.onchange = () => this.choose(spec);
    return h(
      'label',
      {
        class: `orion-SpecOption${unavailable ? ' orion-mod-unavailable' : ''}`,
        title: unavailable || spec.name
      },
      radio,
      h('span', { class: 'orion-SpecOption-name' }, spec.display_name),
      h(
        'span',
        { class: 'orion-SpecOption-detail' },
        [spec.description, unavailable && `unavailable: ${unavailable}`]
          .filter(Boolean)
          .join(' · ')
      )
    );
  }

  private choose(spec: ISpec): void {
    const radio = this.node.querySelector<HTMLInputElement>(
      `input[name="orion-spec"][value="${spec.name}"]`
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
      this.slider.value = String(mib);
    }
    this.memoryHint.textContent = mib === null ? '' : `= ${formatMemory(mib)}`;
  }
}
