// The class view's parking: Park beside Stop on each vGPU kernel, "Park all of <course>" at the end
// of a lab, and per student how many kernels were parked. Each asks first; a refusal shows the
// server's sentence (not yours, busy, no storage, a full disk) and the kernel keeps running.
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle, nullTranslator } from '@jupyterlab/translation';

import {
  IClassKernel,
  ICourseParked,
  IParkedRow,
  errorText,
  parkClassKernel,
  parkCourse
} from './api';
import { actionButton, h } from './dom';
import { DOMAIN, formatClock } from './format';

const plain: TranslationBundle = nullTranslator.load(DOMAIN);

/** "2 parked · last 10:42" for a student the broker parked kernels of; null for none. */
export function formatParkedCount(
  row: IParkedRow | undefined,
  trans: TranslationBundle = plain
): string | null {
  if (!row || !row.snapshots) {
    return null;
  }
  const count = trans._n('%1 parked', '%1 parked', row.snapshots);
  const clock = formatClock(row.last);
  return clock ? trans.__('%1 · last %2', count, clock) : count;
}

/** The courses of the class's kernels, each once, in order ("Park all of" one of them). */
export function classCourses(kernels: IClassKernel[]): string[] {
  return [...new Set(kernels.map(k => k.course ?? '').filter(Boolean))].sort();
}

/** "Parked 3 kernels of ai101." and, for what keeps running, who and why. */
export function courseParkReport(result: ICourseParked, trans: TranslationBundle = plain): string {
  const parked = trans._n(
    'Parked %1 kernel of %2.',
    'Parked %1 kernels of %2.',
    result.parked.length,
    result.course
  );
  const kept = result.not_parked.map(k => trans.__("%1's kernel keeps running: %2", k.user, k.message));
  return [parked, ...kept].join(' ');
}

/** Park beside Stop: asks first, then parks; the server's sentence when it refuses. */
export function parkButton(
  kernel: IClassKernel,
  refresh: () => Promise<unknown>,
  trans: TranslationBundle
): HTMLButtonElement {
  return actionButton(
    trans.__('Park'),
    trans.__("Save %1's variables to their storage and stop the kernel", kernel.user),
    async () => {
      const answer = await showDialog({
        title: trans.__('Park kernel'),
        body: trans.__(
          "Park %1's kernel? Its variables are saved to their storage and the kernel stops; they resume it from their vGPU sidebar.",
          kernel.user
        ),
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: trans.__('Park') })]
      });
      if (!answer.button.accept) {
        return;
      }
      try {
        await parkClassKernel(kernel.kernel_id);
      } catch (error) {
        await showErrorMessage(trans.__('Could not park the kernel'), errorText(error));
      }
      await refresh();
    },
    'plain'
  );
}

/** Instructors: one "Park all of <course>" per course of the class's kernels. */
export function renderCourseParks(
  kernels: IClassKernel[],
  instructor: boolean,
  refresh: () => Promise<unknown>,
  trans: TranslationBundle
): HTMLElement[] {
  if (!instructor) {
    return [];
  }
  return classCourses(kernels).map(course =>
    actionButton(
      trans.__('Park all of %1', course),
      trans.__('Park every kernel of %1 (the end of a lab)', course),
      () => parkAll(course, refresh, trans)
    )
  );
}

async function parkAll(
  course: string,
  refresh: () => Promise<unknown>,
  trans: TranslationBundle
): Promise<void> {
  const answer = await showDialog({
    title: trans.__('Park all of %1', course),
    body: trans.__(
      "Park every kernel of %1? Each student's variables are saved to their storage and their kernels stop.",
      course
    ),
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: trans.__('Park all') })]
  });
  if (!answer.button.accept) {
    return;
  }
  try {
    const result = await parkCourse(course);
    await showDialog({
      title: trans.__('Park all of %1', course),
      body: courseParkReport(result, trans),
      buttons: [Dialog.okButton()]
    });
  } catch (error) {
    await showErrorMessage(trans.__('Could not park %1', course), errorText(error));
  }
  await refresh();
}

/** Per student with kernels parked: "ann · 2 parked · last 10:42" (instructors, hub mode). */
export function renderParkedCounts(
  rows: IParkedRow[] | undefined,
  trans: TranslationBundle
): HTMLElement[] {
  const shown = (rows ?? []).filter(r => formatParkedCount(r, trans) !== null);
  if (!shown.length) {
    return [];
  }
  return [
    h('h4', { class: 'orion-Budgets-title' }, trans.__('Parked kernels')),
    ...shown.map(row =>
      h(
        'div',
        { class: 'orion-Budget orion-ParkedCount', 'data-user': row.user },
        h('span', { class: 'orion-Budget-user' }, row.user),
        h('span', { class: 'orion-Budget-use' }, formatParkedCount(row, trans) ?? '')
      )
    )
  ];
}
