// vGPU-hour budgets where users see them: the status bar's "2.5 of 10 vGPU-hours left this week ·
// resets Tue 09:00" (only where a budget applies), the same line in the sidebar, and, in the
// sidebar's class section, each student's use and what is left with Top up for instructors.
// All from the shared model (GET budget, and GET class's `budgets` rows).
import { InputDialog, showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle, nullTranslator } from '@jupyterlab/translation';

import { IBudget, IBudgetRow, errorText, topUpBudget } from './api';
import { actionButton, h } from './dom';
import { DOMAIN } from './format';
import { IVGPUModel, Part } from './model';
import { ModelStatusItem } from './statusitem';

const plain: TranslationBundle = nullTranslator.load(DOMAIN);

/** Whether a budget applies to this user (the server's answer names one). */
export function applies(b: IBudget | null | undefined): b is IBudget & { budget: number } {
  return !!b && typeof b.budget === 'number' && b.budget > 0;
}

/** Warned (80 %, 95 %) or used up: shown in the warning colour. */
export function urgent(b: IBudget): boolean {
  return !!b.warning || (typeof b.left === 'number' && b.left <= 0);
}

/** "2.5 of 10 vGPU-hours left this week · resets Tue 09:00" (the reset in the lab's time zone, as the server says). */
export function formatBudget(b: IBudget, trans: TranslationBundle = plain): string {
  if (!applies(b)) {
    return b.text;
  }
  const left = (b.left ?? Math.max(b.budget - (b.used ?? 0), 0)).toFixed(1);
  const unit = b.unit ?? trans.__('vGPU-hours');
  const total = String(Number(b.budget.toFixed(3)));
  if (!b.resets_text) {
    return b.text; // an older server: its own sentence
  }
  return b.period === 'term'
    ? trans.__('%1 of %2 %3 left this term · resets %4', left, total, unit, b.resets_text)
    : trans.__('%1 of %2 %3 left this week · resets %4', left, total, unit, b.resets_text);
}

/** A student's row in the class view: "7.5 of 10 used · 2.5 left", or "no budget". */
export function formatBudgetRow(row: IBudgetRow, trans: TranslationBundle = plain): string {
  if (!applies(row)) {
    return trans.__('no budget');
  }
  const used = (row.used ?? 0).toFixed(1);
  const left = (row.left ?? 0).toFixed(1);
  return trans.__('%1 of %2 used · %3 left', used, String(Number(row.budget.toFixed(3))), left);
}

/** The hover text: what was used, the warning, when it resets. */
function budgetTitle(b: IBudget & { budget: number }, trans: TranslationBundle): string {
  return [
    trans.__('vGPU-hour budget: %1 of %2 %3 used', (b.used ?? 0).toFixed(2), b.budget, b.unit ?? ''),
    b.warning?.message,
    trans.__('At zero your vGPU kernels are parked or stopped, and new ones wait for the reset.'),
    trans.__('Click to open the vGPU panel')
  ]
    .filter(Boolean)
    .join('\n');
}

/** The status bar's budget line; shown only where a budget applies. */
export class BudgetStatus extends ModelStatusItem {
  constructor(model: IVGPUModel, trans: TranslationBundle) {
    super(model, trans, 'orion-BudgetStatus');
    this.render();
  }

  protected render(): void {
    const part = this.model.budget;
    if (part?.status === 'rejected' && this.isActive) {
      // Keep the line; say why it may be stale.
      this.node.title = this.trans.__('vGPU-hour budget unknown: %1', errorText(part.reason));
      return;
    }
    const b = part?.status === 'fulfilled' ? part.value : null;
    const shown = applies(b);
    this.node.textContent = shown ? formatBudget(b, this.trans) : '';
    this.node.title = shown ? budgetTitle(b, this.trans) : '';
    this.toggleClass('orion-mod-warning', shown && urgent(b));
    this.setActive(shown);
  }
}

/** The sidebar's budget line (hidden where no budget applies). */
export function renderBudgetLine(into: HTMLElement, part: Part<IBudget>, trans: TranslationBundle): void {
  const b = part?.status === 'fulfilled' ? part.value : null;
  into.hidden = !applies(b);
  if (applies(b)) {
    into.textContent = formatBudget(b, trans);
    into.title = budgetTitle(b, trans);
    into.classList.toggle('orion-mod-warning', urgent(b));
  }
}

/** Instructors: each student's use and what is left, with Top up; nothing where no budgets apply. */
export function renderBudgetRows(
  rows: IBudgetRow[] | undefined,
  instructor: boolean,
  model: IVGPUModel,
  trans: TranslationBundle
): HTMLElement[] {
  const budgeted = (rows ?? []).filter(r => applies(r));
  if (!instructor || !budgeted.length) {
    return [];
  }
  return [
    h('h4', { class: 'orion-Budgets-title' }, trans.__('vGPU-hour budgets')),
    ...budgeted.map(row =>
      h(
        'div',
        {
          class: 'orion-Budget' + (urgent(row) ? ' orion-mod-warning' : ''),
          'data-user': row.user,
          title: row.text
        },
        h('span', { class: 'orion-Budget-user' }, row.user),
        h('span', { class: 'orion-Budget-use' }, formatBudgetRow(row, trans)),
        actionButton(
          trans.__('Top up'),
          trans.__("Add hours to %1's budget for this window", row.user),
          () => topUp(row.user, model, trans),
          'plain'
        )
      )
    )
  ];
}

/** Asks how many hours, then POST budgets/{user}/topup; a refusal shows the server's sentence. */
async function topUp(user: string, model: IVGPUModel, trans: TranslationBundle): Promise<void> {
  const answer = await InputDialog.getNumber({
    title: trans.__("Top up %1's vGPU-hour budget", user),
    label: trans.__('Hours to add for this window'),
    value: 1,
    okLabel: trans.__('Top up')
  });
  if (!answer.button.accept || answer.value === null) {
    return;
  }
  try {
    await topUpBudget(user, answer.value);
  } catch (error) {
    await showErrorMessage(trans.__('Could not top up the budget'), errorText(error));
  }
  await model.refresh();
}
