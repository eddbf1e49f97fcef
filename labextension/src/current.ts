// The current notebook's session context, followed: a view's handlers on its signals move with it
// when another notebook becomes current (the status bar items).
import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';

export class CurrentSession {
  private watched: ISessionContext | null = null;

  /** `connect(context, true)` connects the view's handlers to `context`, `false` disconnects them. */
  constructor(
    private readonly tracker: INotebookTracker,
    private readonly connect: (context: ISessionContext, on: boolean) => void
  ) {}

  /** The current notebook's session context (null without one). */
  get context(): ISessionContext | null {
    return this.tracker.currentWidget?.sessionContext ?? null;
  }

  /** Moves the handlers to the current notebook's session context, if it changed. */
  follow(): void {
    const context = this.context;
    if (context !== this.watched) {
      if (this.watched) {
        this.connect(this.watched, false);
      }
      if (context) {
        this.connect(context, true);
      }
      this.watched = context;
    }
  }
}
