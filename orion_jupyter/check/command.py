"""`orion-jupyter check` from its command line: the settings (a config file and flags), the run, the exit code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from traitlets.config import Config, PyFileConfigLoader

from ..k8s.client import api_client, default_namespace
from ..provisioner import VGPUProvisioner
from ..vgpu import VGPURequestError
from . import run
from .cluster_checks import CheckSettings


def settings_from(args: argparse.Namespace) -> CheckSettings:
    """The Jupyter server's (or broker's) c.VGPUProvisioner from --config, with the flags on top."""
    if args.timeout <= 0:
        raise VGPURequestError("timeout", args.timeout, "--timeout must be more than 0 seconds")
    config = Config()
    if args.config:
        path = Path(args.config).expanduser()
        if not path.is_file():
            raise VGPURequestError("config", args.config, f"--config {args.config} is not a file")
        config = PyFileConfigLoader(path.name, str(path.parent)).load_config()
    provisioner = VGPUProvisioner(config=config)
    for name in ("image", "backend", "orion_controller"):
        if getattr(args, name):
            setattr(provisioner, name, getattr(args, name))
    if args.remote:
        provisioner.orion = {**provisioner.orion, "mode": "remote"}
    namespace = args.namespace or provisioner.namespace or default_namespace(args.kubeconfig)
    return CheckSettings(namespace=namespace, backend=provisioner.backend_model(), provisioner=provisioner,
                         hub=args.hub, service_account=args.service_account or "",
                         singleuser_service_account=args.singleuser_service_account, timeout=args.timeout,
                         canary=not args.no_canary)


def run_command(args: argparse.Namespace) -> int:
    """0 when every required check passed, 1 when one failed, 130 when interrupted."""
    settings = settings_from(args)
    text = args.output == "text"
    if text:
        mode = "hub mode (the broker)" if settings.hub else "direct mode (the Jupyter server)"
        print(f"orion-jupyter check: {mode}, namespace {settings.namespace}, backend {settings.backend.label}",
              flush=True)
    try:
        echo = (lambda line: print(line, flush=True)) if text else None
        report = run(api_client(args.kubeconfig), settings, echo=echo)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("orion-jupyter check: interrupted; what it had created is deleted", file=sys.stderr)
        return 130
    print(report.summary() if text else report.as_json())
    return 0 if report.success else 1
