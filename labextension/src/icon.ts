// The vGPU icon (a chip): for the sidebar tab, the commands and the settings editor, and as an
// image for the launcher's cards. style/icons/vgpu.svg is also the kernel specs' logo to be.
import { LabIcon } from '@jupyterlab/ui-components';

import vgpuSvgstr from '../style/icons/vgpu.svg';

/** Registered by name: the settings schema's "jupyter.lab.setting-icon" refers to it. */
export const vgpuIcon = new LabIcon({ name: 'orion-jupyter:vgpu', svgstr: vgpuSvgstr });

/** The launcher shows Notebook cards as images (like kernel logos). */
export const vgpuIconUrl = `data:image/svg+xml,${encodeURIComponent(vgpuSvgstr)}`;
