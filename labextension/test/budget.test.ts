// vGPU-hour budgets: how the line and the class view's rows read, and the model's budget (asked at
// start-up whatever the views need, then every budgetInterval; never again where none applies).
import { describe, expect, it, vi } from 'vitest';

vi.mock('@jupyterlab/apputils', () => ({ InputDialog: {}, showErrorMessage: vi.fn() }));
vi.mock('@lumino/widgets', () => ({ Widget: class {} })); // the status bar item's base: no DOM here

import type { IBudget, IBudgetRow } from '../src/api';
import { applies, formatBudget, formatBudgetRow, urgent } from '../src/budget';
import { VGPUModel } from '../src/model';

const WEEK: IBudget = {
  budget: 10,
  used: 7.5,
  left: 2.5,
  unit: 'vGPU-hours',
  course: 'ai101',
  resets: '2026-12-08T09:00:00+01:00',
  resets_text: 'Tue 09:00',
  period: 'week',
  text: '2.5 of 10 vGPU-hours left this week · resets Tue 09:00',
  warning: null
};

describe('budget formatting', () => {
  it('says what is left of how much, and when it resets in the lab\'s time', () => {
    expect(formatBudget(WEEK)).toBe('2.5 of 10 vGPU-hours left this week · resets Tue 09:00');
    expect(formatBudget({ ...WEEK, left: 0, used: 10.02 })).toBe(
      '0.0 of 10 vGPU-hours left this week · resets Tue 09:00'
    );
    expect(
      formatBudget({ ...WEEK, budget: 12.5, left: 3.04, period: 'term', resets_text: 'Sun 20 Dec' })
    ).toBe('3.0 of 12.5 vGPU-hours left this term · resets Sun 20 Dec');
  });

  it('applies only where the server names a budget; an older server\'s own sentence is kept', () => {
    const none: IBudget = { budget: null, text: 'no vGPU-hour budget on this server' };
    expect(applies(none)).toBe(false);
    expect(applies(null)).toBe(false);
    expect(applies(WEEK)).toBe(true);
    expect(formatBudget(none)).toBe('no vGPU-hour budget on this server');
    expect(formatBudget({ ...WEEK, resets_text: undefined, text: 'older text' })).toBe('older text');
  });

  it('is urgent once warned or used up', () => {
    expect(urgent(WEEK)).toBe(false);
    expect(urgent({ ...WEEK, warning: { level: 0.8, message: '80% of your budget is used' } })).toBe(true);
    expect(urgent({ ...WEEK, left: 0 })).toBe(true);
  });

  it("reads a student's row as use of budget and what is left", () => {
    const row: IBudgetRow = { ...WEEK, user: 'ann' };
    expect(formatBudgetRow(row)).toBe('7.5 of 10 used · 2.5 left');
    expect(formatBudgetRow({ user: 'bob', budget: null, text: 'no budget' })).toBe('no budget');
  });
});

function source(answer: () => Promise<IBudget>) {
  return {
    allocations: vi.fn(async () => []),
    pool: vi.fn(async () => ({ source: 'local', visible: true, nodes: [], totals: {}, count_resource: 'vgpu' })),
    classKernels: vi.fn(async () => ({ kernels: [], instructor: false })),
    budget: vi.fn(answer)
  };
}

describe('the model\'s budget', () => {
  it('is asked at start-up with no view interested, then not again within the interval', async () => {
    const s = source(async () => WEEK);
    const model = new VGPUModel(s, { refreshInterval: 10 });
    model.budgetInterval = 60_000;
    await vi.waitFor(() => expect(model.budget?.status).toBe('fulfilled'));
    await new Promise(resolve => setTimeout(resolve, 60));
    expect(s.budget).toHaveBeenCalledTimes(1);
    expect(s.allocations).not.toHaveBeenCalled(); // the budget alone: no view asked for more
    model.addInterest(() => 'allocations');
    await model.refresh();
    expect(s.budget).toHaveBeenCalledTimes(1); // still within its interval
    model.budgetInterval = 1;
    await new Promise(resolve => setTimeout(resolve, 5));
    await model.refresh();
    expect(s.budget.mock.calls.length).toBeGreaterThanOrEqual(2); // (the poll may have asked too)
    model.dispose();
  });

  it('is not asked again where none applies, or the server knows no budgets (404)', async () => {
    const none = source(async () => ({ budget: null, text: 'no vGPU-hour budgets in this class' }));
    const model = new VGPUModel(none, { refreshInterval: 10 });
    model.budgetInterval = 1;
    model.addInterest(() => 'allocations');
    await model.refresh();
    await new Promise(resolve => setTimeout(resolve, 60));
    await model.refresh();
    expect(none.budget).toHaveBeenCalledTimes(1);
    model.dispose();

    const older = source(async () => {
      throw Object.assign(new Error('budget: 404 Not Found'), { status: 404 });
    });
    const model2 = new VGPUModel(older, { refreshInterval: 10 });
    model2.budgetInterval = 1;
    model2.addInterest(() => 'allocations');
    await model2.refresh();
    await new Promise(resolve => setTimeout(resolve, 60));
    await model2.refresh();
    expect(older.budget).toHaveBeenCalledTimes(1);
    expect(model2.budget?.status).toBe('rejected');
    model2.dispose();
  });

  it('is asked again after an error that may pass (the broker not answering)', async () => {
    let fail = true;
    const s = source(async () => {
      if (fail) {
        throw Object.assign(new Error('the vGPU broker answered 503'), { status: 503 });
      }
      return WEEK;
    });
    const model = new VGPUModel(s, { refreshInterval: 10 });
    model.budgetInterval = 1;
    model.addInterest(() => 'allocations');
    await model.refresh();
    expect(model.budget?.status).toBe('rejected');
    fail = false;
    await new Promise(resolve => setTimeout(resolve, 5));
    await model.refresh();
    expect(model.budget?.status).toBe('fulfilled');
    model.dispose();
  });
});
