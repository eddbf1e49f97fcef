// orion-jupyter in JupyterLab: the vGPU status bar item, the vGPU sidebar and "New vGPU notebook…".
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { newVGPUNotebook } from './dialog';
import { vgpuIcon, vgpuIconUrl } from './icon';
import { VGPUPanel } from './panel';
import { VGPUStatus } from './statusbar';

const PLUGIN = '@orion-jupyter/labextension';

namespace CommandIDs {
  export const newNotebook = 'orion-jupyter:new-vgpu-notebook';
  export const showPanel = 'orion-jupyter:show-vgpu-panel';
}

const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:panel`,
  description: 'The vGPU sidebar: my vGPU kernels, the pool and the class.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const panel = new VGPUPanel(app.serviceManager.kernels);
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, panel.id);
    app.commands.addCommand(CommandIDs.showPanel, {
      label: 'Show the vGPU panel',
      icon: vgpuIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: CommandIDs.showPanel, category: 'vGPU' });
  }
};

const newNotebookPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:new-notebook`,
  description: 'New vGPU notebook…: a vGPU kernel with the memory you choose, and a notebook on it.',
  autoStart: true,
  optional: [ICommandPalette, ILauncher],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    launcher: ILauncher | null
  ) => {
    app.commands.addCommand(CommandIDs.newNotebook, {
      label: 'New vGPU notebook…',
      caption: 'Start a vGPU kernel with the memory you choose and open a new notebook on it',
      icon: vgpuIcon,
      execute: () => newVGPUNotebook(app)
    });
    palette?.addItem({ command: CommandIDs.newNotebook, category: 'vGPU' });
    // Next to the default kernel's card, before the vGPU kernel specs' own cards.
    launcher?.add({
      command: CommandIDs.newNotebook,
      category: 'Notebook',
      rank: Infinity,
      kernelIconUrl: vgpuIconUrl
    });
  }
};

const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:status`,
  description: "The status bar item with the current notebook kernel's vGPU allocation.",
  autoStart: true,
  requires: [IStatusBar, INotebookTracker],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar, tracker: INotebookTracker) => {
    const item = new VGPUStatus(tracker);
    item.node.onclick = () => {
      if (app.commands.hasCommand(CommandIDs.showPanel)) {
        void app.commands.execute(CommandIDs.showPanel);
      }
    };
    statusBar.registerStatusItem(`${PLUGIN}:status`, {
      item,
      align: 'left',
      rank: 5,
      isActive: () => item.isActive,
      activeStateChanged: item.activeStateChanged
    });
  }
};

export default [panelPlugin, newNotebookPlugin, statusPlugin];
