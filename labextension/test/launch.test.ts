// The launch's notification while it waits in the queue: its place (2nd, then 1st), Cancel (which
// gives the place up, after which the launch ends without an error), then the usual progress.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

const notes = vi.hoisted(() => ({
  emit: vi.fn((_message: string, _type: string, _options: unknown) => 'note-1'),
  update: vi.fn((_args: Record<string, any>) => true),
  dismiss: vi.fn((_id: string) => undefined)
}));
vi.mock('@jupyterlab/apputils', () => ({ Notification: notes, showErrorMessage: vi.fn() }));
const server = vi.hoisted(() => ({
  events: [] as Record<string, unknown>[][],
  getEvents: vi.fn(),
  cancelQueued: vi.fn(async (kernelId: string) => ({ cancelled: kernelId }))
}));
vi.mock('../src/api', async importOriginal => ({
  ...(await importOriginal<typeof import('../src/api')>()),
  getEvents: server.getEvents,
  cancelQueued: server.cancelQueued
}));

import { nullTranslator } from '@jupyterlab/translation';

import { APIError, isCancelled } from '../src/api';
import { withProgress } from '../src/launch';

const trans = nullTranslator.load('orion_jupyter');

function fakeModel() {
  return {
    ownLaunch: vi.fn(),
    refreshQueue: vi.fn(async () => undefined),
    refresh: vi.fn(async () => undefined)
  };
}

const queued = (seq: number, position: number, estimate: number | null) => ({
  seq,
  time: 0,
  stage: 'queue',
  level: 'info',
  message: `waiting for a vGPU: position ${position} in course ai101`,
  queued: { position, ahead: position - 1, estimate_seconds: estimate }
});

/** The notification's last message and action labels. */
function lastUpdate() {
  const args = notes.update.mock.calls.at(-1)?.[0] ?? {};
  return { message: args.message, actions: (args.actions ?? []).map((a: any) => a.label), args };
}

beforeEach(() => {
  vi.useFakeTimers();
  notes.emit.mockClear();
  notes.update.mockClear();
  notes.dismiss.mockClear();
  server.cancelQueued.mockClear();
  server.events = [];
  // each poll of events answers the next list (then nothing new)
  server.getEvents.mockReset().mockImplementation(async () => server.events.shift() ?? []);
});

afterEach(() => {
  vi.useRealTimers();
});

describe('withProgress while the launch waits in the queue', () => {
  it('shows the place as it moves, then the launch, then that the kernel runs', async () => {
    const model = fakeModel();
    let answer!: (value: string) => void;
    let kernelId = '';
    const done = withProgress({ trans, model: model as any }, 'Starting a vGPU kernel', id => {
      kernelId = id;
      return new Promise<string>(resolve => (answer = resolve));
    });
    expect(model.ownLaunch).toHaveBeenCalledWith(kernelId);
    server.events.push([queued(1, 2, 60)]);
    await vi.advanceTimersByTimeAsync(1000); // the notification shows after 800 ms
    expect(notes.emit).toHaveBeenCalledTimes(1);
    expect(lastUpdate().message).toBe(
      'Starting a vGPU kernel\nWaiting for a vGPU: 2nd in line, about 1 min'
    );
    expect(lastUpdate().actions).toEqual(['Cancel']);
    expect(model.refreshQueue).toHaveBeenCalledTimes(1);
    expect(server.getEvents).toHaveBeenLastCalledWith(kernelId, 0);

    server.events.push([queued(2, 1, null)]);
    await vi.advanceTimersByTimeAsync(2100); // slower polling while queued
    expect(lastUpdate().message).toBe('Starting a vGPU kernel\nWaiting for a vGPU: 1st in line');
    expect(server.getEvents).toHaveBeenLastCalledWith(kernelId, 1);

    server.events.push([{ seq: 3, time: 0, stage: 'launch', level: 'info', message: 'pod scheduled on vm' }]);
    await vi.advanceTimersByTimeAsync(2100);
    expect(lastUpdate().message).toBe('Starting a vGPU kernel\npod scheduled on vm');
    expect(lastUpdate().actions).toEqual([]); // no Cancel once out of the queue
    expect(model.refreshQueue).toHaveBeenCalledTimes(1);

    answer('kernel');
    await expect(done).resolves.toBe('kernel');
    expect(lastUpdate().args.type).toBe('success');
    expect(model.refresh).toHaveBeenCalled(); // the status bar's queue item goes
  });

  it('Cancel gives the place up; the launch then ends quietly', async () => {
    const model = fakeModel();
    let refuse!: (error: Error) => void;
    let kernelId = '';
    const done = withProgress({ trans, model: model as any }, 'Starting a vGPU kernel', id => {
      kernelId = id;
      return new Promise<string>((_, reject) => (refuse = reject));
    });
    server.events.push([queued(1, 3, 120)]);
    await vi.advanceTimersByTimeAsync(1000);
    expect(lastUpdate().message).toContain('3rd in line, about 2 min');
    const cancel = lastUpdate().args.actions[0];
    const event = { preventDefault: vi.fn() };
    cancel.callback(event);
    expect(event.preventDefault).toHaveBeenCalled(); // the notification stays until the launch ends
    await vi.advanceTimersByTimeAsync(10);
    expect(server.cancelQueued).toHaveBeenCalledWith(kernelId);
    expect(lastUpdate().message).toBe('Starting a vGPU kernel\nCancelling…');

    refuse(new APIError('cancelled while waiting for a vGPU', undefined, 409, 'cancelled'));
    const error = await done.catch(e => e);
    expect(isCancelled(error)).toBe(true);
    expect(notes.dismiss).toHaveBeenCalledWith('note-1');
  });

  it('tells a cancelled launch from a refused one', () => {
    expect(isCancelled(new APIError('x', undefined, 409, 'cancelled'))).toBe(true);
    expect(isCancelled(new APIError('x', undefined, 409, 'unschedulable'))).toBe(false);
    expect(isCancelled(new APIError('x', undefined, 404, 'cancelled'))).toBe(false);
    expect(isCancelled(new Error('cancelled'))).toBe(false);
  });

  it('a quick launch shows nothing', async () => {
    const model = fakeModel();
    await expect(
      withProgress({ trans, model: model as any }, 'Starting', async () => 'quick')
    ).resolves.toBe('quick');
    await vi.advanceTimersByTimeAsync(2000);
    expect(notes.emit).not.toHaveBeenCalled();
    expect(server.getEvents).not.toHaveBeenCalled();
  });
});
