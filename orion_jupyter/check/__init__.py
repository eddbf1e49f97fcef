"""`orion-jupyter check`: is this cluster ready for vGPU kernels? One line per check, as `linkerd check` does.

Direct mode (`--namespace NS`: the Jupyter server launches kernel pods) and hub mode (`--hub`: the
broker does, single-user servers hold no rights). In order: the API server and its version, the
namespace, every verb the server or broker needs (access reviews), in hub mode that single-user
servers may neither create pods nor read Secrets, what the nodes offer (the backend's resource, DRA
device classes, the KAI queue), the Orion controller, NetworkPolicy enforcement (hub mode: a pair of
short-lived pods) and a canary kernel pod from the configured image. A check that cannot be passed
stops the ones that depend on it. Exit 0 only when every required check passed (‼ is a warning).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from kubernetes import client

from .cluster_checks import CheckSettings, check_api, check_capacity, check_rbac
from .probes import check_canary, check_network_policy
from .report import Report

__all__ = ["CheckSettings", "Report", "run_checks", "run"]


async def run_checks(report: Report, api: client.ApiClient, settings: CheckSettings) -> None:
    if not check_api(report, api, settings):
        return
    rbac_ok = check_rbac(report, api, settings)
    capacity_ok = check_capacity(report, api, settings)
    if settings.hub:
        await check_network_policy(report, api, settings)
    if settings.canary and rbac_ok and capacity_ok:
        await check_canary(report, api, settings)
    elif settings.canary:
        report.warn("Canary kernel", "no canary kernel was started", "fix the failures above first")


def run(api: client.ApiClient, settings: CheckSettings, echo: Callable[[str], None] | None = None) -> Report:
    """Runs every check; SIGTERM (and Ctrl-C) cancel it, and what it created is deleted on the way out."""
    report = Report(echo)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
        except (RuntimeError, ValueError):  # not the main thread: Ctrl-C only
            pass
        try:
            await run_checks(report, api, settings)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    asyncio.run(main())
    return report
