"""The demo notebooks: placed into the user's directory, and optionally run headless (nbclient)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from jupyter_server.utils import ensure_async

from ..progress import ProgressLog

log = logging.getLogger("orion_jupyter.demos")

DEMOS = {
    "mnist": "MNIST: train a small CNN on the vGPU",
    "facenet": "FaceNet: detect, embed and compare faces on the vGPU",
}
#: vGPU memory a demo needs (MiB in all): it starts on the smallest spec with this much.
DEMO_MEMORY_MIB = {"mnist": 0, "facenet": 4096}


def notebooks_dir() -> Path:
    """The packaged notebooks (wheel) or the repository's (editable install)."""
    packaged = Path(__file__).resolve().parent.parent / "notebooks"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "notebooks"


MAX_FINISHED = 500  # finished runs whose owners are remembered (for their events)


class Demos:
    def __init__(self, progress: ProgressLog, folder: str, default_spec: Callable[[int], str], cell_timeout: int):
        self.progress = progress
        self.folder = folder.strip("/")
        self.default_spec = default_spec
        self.cell_timeout = cell_timeout
        self._runs: set[asyncio.Task] = set()
        self.finished: OrderedDict[str, str] = OrderedDict()  # kernel id -> owner, of runs that stopped their kernel

    def spec_for(self, name: str) -> str:
        """The kernel spec the demo starts on when the request names none."""
        return self.default_spec(DEMO_MEMORY_MIB.get(name, 0))

    def names(self) -> list[str]:
        return list(DEMOS)

    def target(self, name: str) -> str:
        return f"{self.folder}/{name}.ipynb" if self.folder else f"{name}.ipynb"

    def list(self) -> list[dict[str, Any]]:
        return [{"name": name, "title": title, "path": self.target(name)} for name, title in DEMOS.items()]

    async def place(self, name: str, contents_manager: Any) -> tuple[str, bool]:
        """Copy the demo notebook to the user's folder, never over a copy they may have edited;
        returns its path and whether it was copied now."""
        target = self.target(name)
        if await ensure_async(contents_manager.file_exists(target)):
            return target, False
        if self.folder and not await ensure_async(contents_manager.dir_exists(self.folder)):
            await ensure_async(contents_manager.save({"type": "directory"}, self.folder))
        notebook = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
        await ensure_async(contents_manager.save({"type": "notebook", "format": "json", "content": notebook}, target))
        return target, True

    async def unplace(self, path: str, contents_manager: Any) -> None:
        """Take back a copy made for a launch that then failed."""
        await ensure_async(contents_manager.delete_file(path))

    def run_headless(self, name: str, path: str, kernel_id: str, owner: str, contents_manager: Any,
                     kernel_manager: Any) -> None:
        task = asyncio.ensure_future(self._run(name, path, kernel_id, owner, contents_manager, kernel_manager))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    def owner_of_finished(self, kernel_id: str) -> str | None:
        """Who ran a headless demo whose kernel is stopped now (its events stay theirs to read)."""
        return self.finished.get(kernel_id)

    async def _run(self, name: str, path: str, kernel_id: str, owner: str, contents_manager: Any,
                   kernel_manager: Any) -> None:
        from nbclient import NotebookClient

        record = lambda message, **kw: self.progress.record(kernel_id, message, stage="demo", **kw)  # noqa: E731
        executed_path = path[: -len(".ipynb")] + ".executed.ipynb"
        try:
            model = await ensure_async(contents_manager.get(path, content=True, type="notebook"))
            notebook = nbformat.from_dict(model["content"])
            code_cells = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
            record(f"running {path}: {len(code_cells)} code cells")

            def on_cell_executed(cell: Any, cell_index: int, execute_reply: Any) -> None:
                done = code_cells.index(cell_index) + 1 if cell_index in code_cells else 0
                record(f"cell {done}/{len(code_cells)} done", done=done, total=len(code_cells))

            client = NotebookClient(notebook, km=kernel_manager.get_kernel(kernel_id), timeout=self.cell_timeout,
                                    on_cell_executed=on_cell_executed)
            await client.async_execute()
            await ensure_async(contents_manager.save({"type": "notebook", "format": "json", "content": notebook},
                                                     executed_path))
            await self._stop(kernel_id, owner, kernel_manager)
            record(f"finished: wrote {executed_path}; its kernel is stopped and its vGPU free again",
                   done=len(code_cells), total=len(code_cells), output=executed_path, finished=True)
        except Exception as err:  # noqa: BLE001 - report any failure of a headless run to the user
            log.exception("demo %s failed", name)
            await self._stop(kernel_id, owner, kernel_manager)
            record(f"demo failed: {err}", level="error", finished=True)

    async def _stop(self, kernel_id: str, owner: str, kernel_manager: Any) -> None:
        """A headless run's kernel was started for it alone: once it ends, its vGPU goes back to the pool."""
        self.finished[kernel_id] = owner
        while len(self.finished) > MAX_FINISHED:
            self.finished.popitem(last=False)
        if kernel_id in kernel_manager:
            try:
                await ensure_async(kernel_manager.shutdown_kernel(kernel_id))
            except Exception:  # noqa: BLE001 - the run's outcome is what the user reads; the culler may still stop it
                log.exception("the kernel %s of a finished demo run could not be stopped", kernel_id)
