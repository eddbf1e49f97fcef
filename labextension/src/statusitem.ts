// A status bar item that shows only while it has something to say (JupyterLab asks isActive and
// listens to activeStateChanged): the queue's place and a notebook's park / resume.
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

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
