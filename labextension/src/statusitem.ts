// A status bar item that shows only while it has something to say (JupyterLab asks isActive and
// listens to activeStateChanged): the queue's place, a notebook's park / resume, the budget.
import { TranslationBundle } from '@jupyterlab/translation';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import type { IVGPUModel } from './model';

export abstract class ToggledStatusItem extends Widget {
  private active = false;
  private readonly _activeStateChanged = new Signal<this, void>(this);

  get isActive(): boolean {
    return this.active;
  }

  get activeStateChanged(): ISignal<this, void> {
    return this._activeStateChanged;
  }

  /** Shown (or not) from now on; JupyterLab hears only of a change. */
  protected setActive(active: boolean): void {
    if (active !== this.active) {
      this.active = active;
      this._activeStateChanged.emit();
    }
  }
}

/** A status bar text item drawn from the shared model, drawn again after every fetch (subclasses
 * call `render()` once their constructor is done). */
export abstract class ModelStatusItem extends ToggledStatusItem {
  constructor(
    protected readonly model: IVGPUModel,
    protected readonly trans: TranslationBundle,
    className: string
  ) {
    super();
    this.addClass('jp-StatusBar-TextItem');
    this.addClass(className);
    model.changed.connect(this.render, this);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  protected abstract render(): void;
}
