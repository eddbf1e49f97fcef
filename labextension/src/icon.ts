// The icons: the vGPU chip (the sidebar tab, the status bar, the settings editor; also the vGPU
// kernel specs' logo, style/icons/vgpu.svg, which the wheel includes), "New vGPU notebook…" (a
// notebook with a plus) and each demo's (MNIST a digit, FaceNet a framed face), so the launcher's
// cards tell apart what they start.
import { LabIcon } from '@jupyterlab/ui-components';

import facenetSvg from '../style/icons/facenet.svg';
import mnistSvg from '../style/icons/mnist.svg';
import newNotebookSvgstr from '../style/icons/new-notebook.svg';
import vgpuSvgstr from '../style/icons/vgpu.svg';

/** Registered by name: the settings schema's "jupyter.lab.setting-icon" refers to it. */
export const vgpuIcon = new LabIcon({ name: 'orion-jupyter:vgpu', svgstr: vgpuSvgstr });
export const newNotebookSvg = newNotebookSvgstr;
export const newNotebookIcon = new LabIcon({
  name: 'orion-jupyter:new-vgpu-notebook',
  svgstr: newNotebookSvgstr
});
export const mnistIcon = new LabIcon({ name: 'orion-jupyter:mnist', svgstr: mnistSvg });
export const facenetIcon = new LabIcon({ name: 'orion-jupyter:facenet', svgstr: facenetSvg });

/** The launcher shows Notebook cards as images (like kernel logos). */
export const iconUrl = (svg: string): string => `data:image/svg+xml,${encodeURIComponent(svg)}`;

/** Each demo's icon by name (launch.ts DEMOS), as svg (the launcher's image) and as a LabIcon. */
export const DEMO_ICONS: Record<string, { svg: string; icon: LabIcon }> = {
  mnist: { svg: mnistSvg, icon: mnistIcon },
  facenet: { svg: facenetSvg, icon: facenetIcon }
};
