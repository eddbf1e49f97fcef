// Idle vGPU kernels the server stops to give their vGPU back: the warning ("idle: stops at 10:42")
// with its Keep, as the status bar item and the sidebar's kernel rows show it.
import { Notification } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';

import { APIError, IAllocation, errorText, keepKernel } from './api';
import { actionButton, h } from './dom';
import { cullNotice } from './format';
import { IVGPUModel } from './model';

/** Keep: the kernel's idle clock starts again; a refusal (no keeps left) is said in a notification. */
export async function keep(
  model: IVGPUModel,
  kernelId: string,
  trans: TranslationBundle
): Promise<void> {
  try {
    await keepKernel(kernelId);
  } catch (error) {
    const none = error instanceof APIError && error.status === 409;
    Notification.warning(
      none
        ? trans.__('No keeps left: %1', errorText(error))
        : trans.__('Could not keep the kernel: %1', errorText(error)),
      { autoClose: 8000 }
    );
  }
  await model.refresh();
}

/**
 * "idle: stops at 10:42 · Keep" (Keep a button), or "… · no keeps left"; null when the kernel is
 * not about to be stopped.
 */
export function cullWarning(
  k: IAllocation,
  model: IVGPUModel,
  trans: TranslationBundle
): HTMLElement | null {
  const notice = cullNotice(k, trans);
  if (!notice) {
    return null;
  }
  const action = notice.canKeep
    ? actionButton(
        trans.__('Keep'),
        trans.__('Keep this kernel: its idle time starts again'),
        () => keep(model, k.kernel_id, trans),
        'link'
      )
    : h('span', { class: 'orion-Cull-none' }, notice.noKeeps ?? '');
  return h(
    'span',
    { class: 'orion-Cull', title: notice.title },
    h('span', { class: 'orion-Cull-text' }, notice.text),
    ' · ',
    action
  );
}
