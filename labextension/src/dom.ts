// A small element builder for the panel and the dialog (no framework needed for a few lists).

export type Child = Node | string | null | undefined | false;

/** h('div', { class: 'x', title: 'y' }, 'text', otherNode) */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    element.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) {
      element.append(child);
    }
  }
  return element;
}

/**
 * A button that runs `action` on click and is disabled until it settles: a warning (Stop), a plain
 * one (Exempt) or a link-like one inside a line of text (Keep). Its click goes no further (the
 * status bar item around it opens the panel).
 */
export function actionButton(
  label: string,
  title: string,
  action: () => Promise<unknown>,
  kind: 'warn' | 'plain' | 'link' = 'warn'
): HTMLButtonElement {
  const classes = {
    warn: 'jp-Button jp-mod-styled jp-mod-warn orion-StopButton',
    plain: 'jp-Button jp-mod-styled orion-StopButton orion-mod-plain',
    link: 'orion-LinkButton'
  };
  const button = h('button', { class: classes[kind], title, type: 'button' }, label);
  button.onclick = event => {
    event.stopPropagation();
    button.disabled = true;
    void action().finally(() => (button.disabled = false));
  };
  return button;
}
