// Status bar item beside the vGPU one: "Park" for the current notebook's vGPU kernel (where the
// server keeps snapshots), and "parked 10:42 · Resume" for a notebook whose kernel was parked, by
// its user or by idle culling (its kernel is gone and a snapshot of its path exists).
import { INotebookTracker } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';
import { IDisposable } from '@lumino/disposable';

import { CurrentSession } from './current';
import { actionButton, h } from './dom';
import { formatClock, formatParked, formatSize } from './format';
import { IVGPUModel } from './model';
import { Parking } from './park';
import { ToggledStatusItem } from './statusitem';

export class ParkStatus extends ToggledStatusItem {
  private readonly session: CurrentSession;
  private readonly interest: IDisposable;

  constructor(
    private readonly model: IVGPUModel,
    private readonly tracker: INotebookTracker,
    private readonly parking: Parking,
    private readonly trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-StatusBar-TextItem');
    this.addClass('orion-ParkStatus');
    // A notebook without a kernel may have been parked (idle culling): its snapshots are asked for.
    this.interest = model.addInterest(() => (tracker.currentWidget ? 'allocations' : 'none'));
    model.changed.connect(this.render, this);
    parking.changed.connect(this.render, this);
    this.session = new CurrentSession(tracker, (context, on) => {
      const how = on ? 'connect' : 'disconnect';
      context.kernelChanged[how](this.render, this);
      context.sessionChanged[how](this.render, this);
    });
    tracker.currentChanged.connect(this.watchCurrent, this);
    this.watchCurrent();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.interest.dispose();
    this.model.changed.disconnect(this.render, this);
    this.parking.changed.disconnect(this.render, this);
    this.tracker.currentChanged.disconnect(this.watchCurrent, this);
    super.dispose();
  }

  private watchCurrent(): void {
    this.session.follow();
    this.render();
  }

  private render(): void {
    const { model, parking, trans } = this;
    const context = this.session.context;
    const kernelId = context?.session?.kernel?.id;
    const allocation = kernelId ? model.allocation(kernelId) : null;
    const snapshot = !allocation && context ? model.parkedFor(context.path) : null;
    let shown: (HTMLElement | string)[] = [];
    this.node.title = '';
    if (kernelId && allocation?.vgpus && model.canPark) {
      const what = context?.path || kernelId;
      shown = [
        parking.busy(kernelId)
          ? h('span', {}, trans.__('parking…'))
          : actionButton(
              trans.__('Park'),
              trans.__(
                "Park: save this notebook's variables and stop its kernel, so its vGPU is free for others; Resume brings them back"
              ),
              () => parking.park(kernelId, what),
              'link'
            )
      ];
    } else if (snapshot && context) {
      const resume = parking.busy(snapshot.id)
        ? h('span', {}, trans.__('resuming…'))
        : actionButton(
            trans.__('Resume'),
            trans.__("Start a kernel with this notebook's saved variables"),
            () => parking.resume(snapshot, context),
            'link'
          );
      shown = [h('span', { class: 'orion-ParkStatus-text' }, formatParked(snapshot, trans)), ' · ', resume];
      this.node.title = trans._n(
        "This notebook's kernel was parked at %2 (%1 variable, %3); its vGPU went back to the pool.",
        "This notebook's kernel was parked at %2 (%1 variables, %3); its vGPU went back to the pool.",
        snapshot.saved?.length ?? 0,
        formatClock(snapshot.created) ?? '—',
        formatSize(snapshot.bytes)
      );
    }
    this.node.replaceChildren(...shown);
    this.setActive(shown.length > 0);
  }
}
