// orion-jupyter in JupyterLab and Notebook 7: one vGPU model (polled once, with its settings), the
// status bar items (the kernel's vGPU, with its idle warning; the queue), the vGPU sidebar,
// "New vGPU notebook…" and the MNIST / FaceNet launcher cards.
// Only the model is required by the others; every JupyterLab token is optional, so a page without
// a status bar, a launcher or a file browser (Notebook 7's) loads it too.
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  IKernelStatusModel,
  ISessionContext,
  ISessionContextDialogs,
  Toolbar
} from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import { getAllocations, getBudget, getClass, getPool, getQueue, getSnapshots } from './api';
import { BudgetStatus } from './budget';
import { newNotebookOnSpec, newVGPUNotebook } from './dialog';
import { DOMAIN } from './format';
import { DEMO_ICONS, iconUrl, newNotebookIcon, newNotebookSvg, vgpuIcon } from './icon';
import { RealGrantNames, specGrant } from './kernelname';
import { DEMOS, ILaunchContext, openDemo } from './launch';
import {
  DEFAULT_BUDGET_REFRESH_MS,
  DEFAULT_REFRESH_MS,
  DEFAULT_SLIDER_MAX_MIB,
  IVGPUModel,
  VGPUModel
} from './model';
import { VGPUPanel } from './panel';
import { extendNewMenu } from './newmenu';
import { Parking } from './park';
import { ParkStatus } from './parkstatus';
import { QueueStatus, offerToOpen } from './queue';
import { removeRefusedNotebooks } from './refusal';
import { VGPUStatus } from './statusbar';

const PLUGIN = '@orion-jupyter/labextension';
/** The demos' launcher section: after Notebook (0), before Console (20). */
const DEMO_CATEGORY_RANK = 10;

namespace CommandIDs {
  export const newNotebook = 'orion-jupyter:new-vgpu-notebook';
  export const openDemo = 'orion-jupyter:open-demo';
  export const newOnSpec = 'orion-jupyter:new-notebook-on-spec';
  export const showPanel = 'orion-jupyter:show-vgpu-panel';
}

/** The shared model and its settings (schema/model.json). */
const modelPlugin: JupyterFrontEndPlugin<IVGPUModel> = {
  id: `${PLUGIN}:model`,
  description: 'The vGPU allocations, pool and class, polled once for the whole page.',
  autoStart: true,
  provides: IVGPUModel,
  optional: [ISettingRegistry],
  activate: (app: JupyterFrontEnd, settings: ISettingRegistry | null): IVGPUModel => {
    const model = new VGPUModel(
      {
        allocations: getAllocations,
        pool: getPool,
        classKernels: getClass,
        queue: getQueue,
        snapshots: getSnapshots,
        budget: getBudget
      },
      { kernels: app.serviceManager.kernels }
    );
    if (settings) {
      void settings
        .load(modelPlugin.id)
        .then(loaded => {
          const apply = () => {
            const seconds = Number(loaded.get('refreshInterval').composite);
            const gib = Number(loaded.get('sliderMaxMemory').composite);
            model.refreshInterval = seconds > 0 ? seconds * 1000 : DEFAULT_REFRESH_MS;
            model.sliderMaxMib = gib > 0 ? gib * 1024 : DEFAULT_SLIDER_MAX_MIB;
            const budgetSeconds = Number(loaded.get('budgetRefreshInterval').composite);
            model.budgetInterval = budgetSeconds > 0 ? budgetSeconds * 1000 : DEFAULT_BUDGET_REFRESH_MS;
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(error => console.warn('orion-jupyter: the vGPU settings could not be loaded', error));
    }
    return model;
  }
};

const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:panel`,
  description: 'The vGPU sidebar: my vGPU kernels, my parked notebooks, the pool and the class.',
  autoStart: true,
  requires: [IVGPUModel],
  optional: [ITranslator, ILayoutRestorer, ICommandPalette, INotebookTracker, IDocumentManager],
  activate: (
    app: JupyterFrontEnd,
    model: IVGPUModel,
    translator: ITranslator | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    tracker: INotebookTracker | null,
    docManager: IDocumentManager | null
  ) => {
    const trans = (translator ?? nullTranslator).load(DOMAIN);
    const parking = new Parking({ app, model, trans, tracker, docManager });
    const panel = new VGPUPanel(model, app.serviceManager.kernels, trans, parking);
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, panel.id);
    app.commands.addCommand(CommandIDs.showPanel, {
      label: trans.__('Show the vGPU panel'),
      icon: vgpuIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: CommandIDs.showPanel, category: trans.__('vGPU') });
  }
};

const newNotebookPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:new-notebook`,
  description:
    'New vGPU notebook…: a vGPU kernel with the memory you choose, and a notebook on it; the demos.',
  autoStart: true,
  requires: [IVGPUModel],
  optional: [ITranslator, ICommandPalette, ILauncher, IDocumentManager, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    model: IVGPUModel,
    translator: ITranslator | null,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    docManager: IDocumentManager | null,
    defaultBrowser: IDefaultFileBrowser | null
  ) => {
    const trans = (translator ?? nullTranslator).load(DOMAIN);
    const ctx: ILaunchContext = { app, model, trans, docManager, defaultBrowser };
    // A launch from before a page reload that waited in the queue: its kernel runs now.
    model.queueLeft.connect((_, left) => void offerToOpen(ctx, left));
    const category = trans.__('vGPU');
    app.commands.addCommand(CommandIDs.newNotebook, {
      // File > New lists kinds ("Notebook", "Console"): there it is "vGPU Notebook…".
      label: args => (args.isMenu ? trans.__('vGPU Notebook…') : trans.__('New vGPU notebook…')),
      caption: trans.__(
        'Start a vGPU kernel with the memory you choose and open a new notebook on it, in the file browser\'s folder'
      ),
      icon: newNotebookIcon,
      execute: () => newVGPUNotebook(ctx)
    });
    app.commands.addCommand(CommandIDs.openDemo, {
      label: args => DEMOS.find(d => d.name === args.name)?.label(trans) ?? String(args.name),
      caption: trans.__('Start a vGPU kernel for this demo notebook and open it'),
      icon: args => DEMO_ICONS[String(args.name)]?.icon ?? vgpuIcon,
      describedBy: {
        args: {
          type: 'object',
          properties: { name: { type: 'string', enum: DEMOS.map(d => d.name) } },
          required: ['name']
        }
      },
      execute: args => openDemo(ctx, String(args.name))
    });
    palette?.addItem({ command: CommandIDs.newNotebook, category });
    // A vGPU spec's item in Notebook 7's New menu (newmenu.ts): the kernel first, then the notebook.
    const vgpuSpec = (name: string) => {
      const spec = app.serviceManager.kernelspecs.specs?.kernelspecs[name];
      const grant = specGrant(spec?.metadata);
      return spec && grant ? { name, display_name: spec.display_name, vgpus: grant.vgpus } : null;
    };
    app.commands.addCommand(CommandIDs.newOnSpec, {
      label: args => vgpuSpec(String(args.spec))?.display_name ?? String(args.spec),
      caption: trans.__('Start this vGPU kernel, then open a new notebook on it'),
      execute: args => {
        const spec = vgpuSpec(String(args.spec));
        return spec ? newNotebookOnSpec(ctx, spec) : undefined;
      }
    });
    if (defaultBrowser) {
      void extendNewMenu(
        app,
        defaultBrowser,
        [
          { command: CommandIDs.newNotebook },
          ...DEMOS.map(d => ({ command: CommandIDs.openDemo, args: { name: d.name } })),
          { command: CommandIDs.showPanel }
        ],
        name => (vgpuSpec(name) ? { command: CommandIDs.newOnSpec, args: { spec: name } } : null)
      );
    }
    for (const demo of DEMOS) {
      palette?.addItem({ command: CommandIDs.openDemo, category, args: { name: demo.name } });
    }
    // Among the Notebook cards (the kernels', each with the vGPU kernel logo).
    launcher?.add({
      command: CommandIDs.newNotebook,
      category: 'Notebook',
      rank: Infinity,
      kernelIconUrl: iconUrl(newNotebookSvg)
    });
    // The demos in a section of their own right after the Notebook section (rank 0; Console is 20),
    // so they never stand before the kernels.
    for (const demo of DEMOS) {
      launcher?.add({
        command: CommandIDs.openDemo,
        args: { name: demo.name },
        category: trans.__('vGPU demos'),
        categoryRank: DEMO_CATEGORY_RANK,
        rank: DEMOS.indexOf(demo),
        kernelIconUrl: iconUrl(DEMO_ICONS[demo.name]?.svg ?? newNotebookSvg)
      });
    }
  }
};

const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:status`,
  description:
    "The status bar items: the current notebook kernel's vGPU allocation (or its idle warning, with Keep), its Park (or \"parked 10:42 · Resume\") and this user's place in the vGPU queue.",
  autoStart: true,
  requires: [IVGPUModel],
  optional: [IStatusBar, INotebookTracker, ITranslator, IDocumentManager],
  activate: (
    app: JupyterFrontEnd,
    model: IVGPUModel,
    statusBar: IStatusBar | null,
    tracker: INotebookTracker | null,
    translator: ITranslator | null,
    docManager: IDocumentManager | null
  ) => {
    if (!statusBar || !tracker) {
      return; // Notebook 7 has no status bar
    }
    const trans = (translator ?? nullTranslator).load(DOMAIN);
    const item = new VGPUStatus(model, tracker, trans);
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
    const parking = new Parking({ app, model, trans, tracker, docManager });
    const park = new ParkStatus(model, tracker, parking, trans);
    statusBar.registerStatusItem(`${PLUGIN}:park`, {
      item: park,
      align: 'left',
      rank: 5.5,
      isActive: () => park.isActive,
      activeStateChanged: park.activeStateChanged
    });
    const queue = new QueueStatus(model, trans);
    statusBar.registerStatusItem(`${PLUGIN}:queue`, {
      item: queue,
      align: 'left',
      rank: 6,
      isActive: () => queue.isActive,
      activeStateChanged: queue.activeStateChanged
    });
  }
};

/** The status bar's vGPU-hour budget line, where a budget applies (the sidebar shows it too). */
const budgetPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:budget`,
  description:
    'The status bar\'s "2.5 of 10 vGPU-hours left this week · resets Tue 09:00", where a vGPU-hour budget applies.',
  autoStart: true,
  requires: [IVGPUModel],
  optional: [IStatusBar, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    model: IVGPUModel,
    statusBar: IStatusBar | null,
    translator: ITranslator | null
  ) => {
    if (!statusBar) {
      return; // Notebook 7 has no status bar (its vGPU sidebar shows the budget)
    }
    const item = new BudgetStatus(model, (translator ?? nullTranslator).load(DOMAIN));
    item.node.onclick = () => {
      if (app.commands.hasCommand(CommandIDs.showPanel)) {
        void app.commands.execute(CommandIDs.showPanel);
      }
    };
    statusBar.registerStatusItem(`${PLUGIN}:budget`, {
      item,
      align: 'left',
      rank: 6.5,
      isActive: () => item.isActive,
      activeStateChanged: item.activeStateChanged
    });
  }
};

const refusalPlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:refused-notebooks`,
  description:
    'A new, empty notebook whose kernel the server refused (e.g. a full vGPU pool) is removed once the error is read.',
  autoStart: true,
  optional: [INotebookTracker, ITranslator],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker | null, translator: ITranslator | null) => {
    if (tracker) {
      removeRefusedNotebooks(app, tracker, (translator ?? nullTranslator).load(DOMAIN));
    }
  }
};

const kernelNamePlugin: JupyterFrontEndPlugin<void> = {
  id: `${PLUGIN}:kernel-name`,
  description:
    "A notebook's vGPU kernel named by what the server granted it (8 GiB asked of the 4 GiB spec: \"1 vGPU · 8 GiB\"), in the toolbar and the status bar's kernel item.",
  autoStart: true,
  requires: [IVGPUModel],
  optional: [INotebookTracker, IKernelStatusModel, ISessionContextDialogs, ITranslator],
  activate: (
    _: JupyterFrontEnd,
    model: IVGPUModel,
    tracker: INotebookTracker | null,
    kernelStatus: IKernelStatusModel | null,
    dialogs: ISessionContextDialogs | null,
    translator: ITranslator | null
  ) => {
    if (tracker) {
      const nameItem = (context: ISessionContext) =>
        Toolbar.createKernelNameItem(context, dialogs ?? undefined, translator ?? undefined);
      const trans = (translator ?? nullTranslator).load(DOMAIN);
      new RealGrantNames(model, tracker, kernelStatus, nameItem, trans);
    }
  }
};

export default [
  modelPlugin,
  panelPlugin,
  newNotebookPlugin,
  statusPlugin,
  budgetPlugin,
  refusalPlugin,
  kernelNamePlugin
];
