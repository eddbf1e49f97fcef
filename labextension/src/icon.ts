// The vGPU icon (a chip): for the sidebar tab and commands, and as an image for the launcher card.
import { LabIcon } from '@jupyterlab/ui-components';

const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M9 2h2v3H9zM13 2h2v3h-2zM9 19h2v3H9zM13 19h2v3h-2zM2 9h3v2H2zM2 13h3v2H2zM19 9h3v2h-3zM19 13h3v2h-3z"/>
    <path d="M6 6h12v12H6zm2 2v8h8V8zm2 2h4v4h-4z"/>
  </g>
</svg>`;

export const vgpuIcon = new LabIcon({ name: 'orion-jupyter:vgpu', svgstr: svg });

/** The launcher shows Notebook cards as images (like kernel logos). */
export const vgpuIconUrl = `data:image/svg+xml,${encodeURIComponent(svg)}`;
