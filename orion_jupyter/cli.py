"""`orion-jupyter`: kernel specs, manifests, cleanup and a local JupyterLab."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import kernelspecs
from .vgpu import VGPURequest, VGPURequestError, format_mib


def _install(args: argparse.Namespace) -> int:
    location = {"user": args.user, "prefix": sys.prefix if args.sys_prefix else args.prefix}
    if args.presets:
        specs = kernelspecs.load_presets(args.presets)
    else:
        if not args.name:
            raise VGPURequestError("name", None, "kernel spec name is missing; give --name NAME or --presets FILE")
        options = {"image": args.image} if args.image else {}
        specs = [
            kernelspecs.VGPUKernelSpec(
                name=args.name,
                request=VGPURequest.parse(args.vgpus, args.memory, args.compute),
                display_name=args.display_name or "",
                description=args.description or "",
                backend=args.backend,
                options=options,
            )
        ]
    for spec in specs:
        path = kernelspecs.install(spec, **location)
        print(f"Installed {spec.name} ({spec.display_name}) in {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    specs = kernelspecs.vgpu_specs(kernelspecs.listing_manager())
    rows = []
    for name, spec in sorted(specs.items()):
        config = spec.metadata["kernel_provisioner"].get("config", {})
        request = kernelspecs.spec_request(spec)
        rows.append({
            "name": name,
            "display_name": spec.display_name,
            "vgpus": request.count,
            "memory_mib": request.memory_mib,
            "backend": config.get("backend", "(default)"),
            "path": spec.resource_dir,
        })
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    if not rows:
        print("No vGPU kernel specs installed; add one with `orion-jupyter kernelspec install`.")
        return 0
    header = ("NAME", "VGPU", "MEMORY", "BACKEND", "DISPLAY NAME")
    table = [header] + [
        (r["name"], str(r["vgpus"]), format_mib(r["memory_mib"]) if r["vgpus"] else "-", r["backend"],
         r["display_name"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    folders = sorted({str(Path(r["path"]).parent) for r in rows})
    print(f"Installed in {', '.join(folders)}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    for name in args.names:
        kernelspecs.remove(name)
        print(f"Removed {name}")
    return 0


def _manifests(args: argparse.Namespace) -> int:
    from .k8s.rbac import rbac_manifests

    if args.orion_stack:
        return _orion_stack(args)
    stack_only = [f for f in _STACK_FLAGS if getattr(args, f) not in (None, False)]
    if stack_only:
        return _usage_error(f"--{stack_only[0].replace('_', '-')} is for the Orion stack: add --orion-stack")
    if not args.hub:
        for flag in ("values", "hub_service_account", "broker_image", "kernel_egress"):
            if getattr(args, flag):
                return _usage_error(f"--{flag.replace('_', '-')} is for hub mode: add --hub")
        docs = rbac_manifests(args.namespace, args.service_account or "jupyter", read_nodes=not args.no_nodes,
                              backend=args.backend, read_all_pods=args.read_all_pods)
    elif args.values:
        return _hub_values(args)
    else:
        from .k8s.hub_manifests import BROKER_SERVICE, broker_manifests, kernel_network_defaults

        if args.service_account and args.hub_service_account:
            return _usage_error("--service-account (a new account) or --hub-service-account (an existing one), "
                                "not both")
        try:
            network = kernel_network_defaults(args.namespace, args.kernel_egress or ())
        except ValueError as err:
            return _usage_error(str(err))
        docs = broker_manifests(args.namespace, args.hub_service_account or args.service_account or BROKER_SERVICE,
                                read_nodes=not args.no_nodes, read_all_pods=args.read_all_pods, backend=args.backend,
                                create_service_account=not args.hub_service_account) + network
    if args.backend == "dra":
        docs += _claim_templates(args)
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0


_STACK_FLAGS = ("remote", "gpu_node_selector", "controller_node_selector", "vgpus_per_gpu", "cuda", "bind_net",
                "rdma", "controller_image", "plugin_image", "server_image")


def _orion_stack(args: argparse.Namespace) -> int:
    """The Orion Controller, device plugin and Orion Server (`--orion-stack`): what the tutorial edits by hand."""
    from .k8s.orion_stack import OrionStack, orion_stack_manifests, parse_selector

    if args.hub or args.values or args.backend:
        return _usage_error("--orion-stack renders Orion's own components; render the RBAC in a second call")
    stack = OrionStack(
        namespace=args.namespace,
        gpu_node_selector=parse_selector(args.gpu_node_selector or "", "gpu-node-selector"),
        controller_node_selector=parse_selector(args.controller_node_selector or "", "controller-node-selector"),
        vgpus_per_gpu=2 if args.vgpus_per_gpu is None else args.vgpus_per_gpu, cuda=args.cuda or "10.0",
        remote=args.remote, bind_net=args.bind_net or "", rdma=args.rdma,
        **{k: v for k in ("controller_image", "plugin_image", "server_image") if (v := getattr(args, k))},
    )
    docs = orion_stack_manifests(stack)
    print(f"# Orion stack in namespace {stack.namespace}; kernels reach the controller at {stack.controller_address}")
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0


def _usage_error(message: str) -> int:
    print(f"orion-jupyter manifests: error: {message}", file=sys.stderr)
    return 2


def _hub_values(args: argparse.Namespace) -> int:
    """The zero-to-jupyterhub values snippet of hub mode (alone: it goes to helm, the RBAC to kubectl)."""
    from .k8s.hub_manifests import z2jh_values, z2jh_values_yaml

    if not args.broker_image:
        return _usage_error("--values needs --broker-image NAME:TAG, a hub image with orion-jupyter installed "
                            "(the broker runs in the hub pod)")
    try:
        values = z2jh_values(args.broker_image, args.namespace, args.presets)
    except ValueError as err:
        return _usage_error(str(err))
    print(z2jh_values_yaml(values, args.namespace), end="")
    return 0


def _claim_templates(args: argparse.Namespace) -> list[dict]:
    """The presets' ResourceClaimTemplates (a presets file, else the installed vGPU kernel specs,
    else the lab's default presets), one per distinct request; specs of another backend are skipped."""
    from .backends import get_backend
    from .k8s.dra import claim_template

    backend = get_backend("dra", dra={"flavors": args.dra_flavor} if args.dra_flavor else None)
    if args.presets:
        requests = [(s.backend, s.request) for s in kernelspecs.load_presets(args.presets)]
    else:
        installed = kernelspecs.vgpu_specs()
        requests = [((s.metadata["kernel_provisioner"].get("config") or {}).get("backend"), kernelspecs.spec_request(s))
                    for s in installed.values()]
        if not installed:
            from .lab import DEFAULT_PRESETS

            requests = [(s.backend, s.request) for s in DEFAULT_PRESETS]
    templates: dict[str, dict] = {}
    for spec_backend, request in requests:
        if request.count and spec_backend in (None, "dra"):
            template = claim_template(backend, request, args.namespace)
            templates.setdefault(template["metadata"]["name"], template)
    return list(templates.values())


def _gc(args: argparse.Namespace) -> int:
    from .k8s.client import api_client, default_namespace
    from .k8s.gc import collect_garbage

    _require_cluster(args.kubeconfig)
    if args.min_age < 0:
        raise VGPURequestError("min_age", args.min_age, "--min-age must be 0 or more seconds")
    namespace = args.namespace or default_namespace(args.kubeconfig)
    try:
        removed = collect_garbage(api_client(args.kubeconfig), namespace, dry_run=args.dry_run, min_age=args.min_age)
    except Exception as err:  # noqa: BLE001 - the API's refusal or an unreachable server, said in one line
        raise VGPURequestError("cluster", namespace,
                               f"cannot collect garbage in namespace {namespace}: {err}") from None
    verb = "Would delete" if args.dry_run else "Deleted"
    for kind, name, why in removed:
        print(f"{verb} {kind} {namespace}/{name}: {why}")
    if not removed:
        print(f"Nothing to collect in namespace {namespace}.")
    return 0


def _require_cluster(kubeconfig: str) -> None:
    """A kubeconfig that exists, or a cluster found otherwise (in a pod, KUBECONFIG, ~/.kube/config)."""
    from .k8s.client import cluster_configured

    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise VGPURequestError("kubeconfig", kubeconfig, f"--kubeconfig {kubeconfig} is not a file")
    if not cluster_configured(kubeconfig):
        raise VGPURequestError("kubeconfig", None, "no Kubernetes cluster is configured (not in a pod, no KUBECONFIG, "
                                                   "no ~/.kube/config); give --kubeconfig FILE")


def _check(args: argparse.Namespace) -> int:
    from .check.command import run_command

    _require_cluster(args.kubeconfig)
    return run_command(args)


def _broker(args: argparse.Namespace, extra: list[str]) -> int:
    from .broker.app import main as broker_main

    return broker_main(extra)


def _lab(args: argparse.Namespace, extra: list[str]) -> int:
    from .lab import run_lab

    return run_lab(kubernetes=args.kubernetes, presets=args.presets, home=args.home, jupyter_args=extra,
                   workspace=args.workspace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orion-jupyter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    spec = commands.add_parser("kernelspec", help="install, list and remove vGPU kernel specs")
    spec_commands = spec.add_subparsers(dest="action", required=True)
    install = spec_commands.add_parser("install", help="install one vGPU kernel spec, or a presets file")
    install.add_argument("--name", help="kernel spec name (lower-case, digits, '-', '_', '.')")
    install.add_argument("--display-name", help="launcher title; default says what it gets")
    install.add_argument("--description", help="one line shown in the vGPU dialog")
    install.add_argument("--vgpus", default="1", help="number of vGPUs (0 = CPU only); default 1")
    install.add_argument("--memory", default="4Gi", help="vGPU memory per vGPU: 4096 (MiB), 4Gi, 0.5Gi; default 4Gi")
    install.add_argument("--compute", help="compute share of one GPU in percent (1-100)")
    install.add_argument("--backend", help="orion, hami or nvidia; default: the server's configuration")
    install.add_argument("--image", help="kernel container image; default: the server's configuration")
    install.add_argument("--presets", help="YAML list of presets (display_name, description, vgpus, memory, image)")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (e.g. a venv)")
    where.add_argument("--prefix", help="install under this prefix")
    install.set_defaults(func=_install)
    listing = spec_commands.add_parser("list", help="list the installed vGPU kernel specs")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)
    remove = spec_commands.add_parser("remove", help="remove vGPU kernel specs")
    remove.add_argument("names", nargs="+")
    remove.set_defaults(func=_remove)

    manifests = commands.add_parser("manifests", help="print the RBAC a Jupyter server (or, with --hub, the broker) "
                                                      "needs, as YAML")
    manifests.add_argument("--namespace", required=True,
                           help="namespace the kernel pods run in (with --orion-stack: Orion's namespace)")
    manifests.add_argument("--service-account",
                           help="service account to create and bind: the Jupyter server's (default jupyter) or, "
                                "with --hub, the broker's (default orion-broker)")
    manifests.add_argument("--hub", action="store_true",
                           help="hub mode: the RBAC of `orion-jupyter broker`, the JupyterHub service that alone "
                                "holds the Role (single-user servers hold no cluster credentials)")
    manifests.add_argument("--hub-service-account", metavar="NAME",
                           help="with --hub: bind the broker Role to this existing service account instead of "
                                "creating one; 'hub' (z2jh's hub) when the broker runs in the hub pod")
    manifests.add_argument("--values", action="store_true",
                           help="with --hub: print instead the zero-to-jupyterhub Helm values snippet (needs "
                                "--broker-image; with --presets, embeds them and installs their kernel specs)")
    manifests.add_argument("--broker-image", metavar="NAME:TAG",
                           help="with --hub --values: the hub image, with orion-jupyter installed")
    manifests.add_argument("--kernel-egress", action="append", metavar="CIDR[:PORT]",
                           help="with --hub: what students' kernels may reach besides DNS (repeat it), e.g. the "
                                "Orion controller 10.0.0.5/32:9123 or 0.0.0.0/0:443; the rest is denied by the "
                                "kernels' default-deny NetworkPolicy")
    manifests.add_argument("--no-nodes", action="store_true", help="no read access to nodes (no pool view)")
    manifests.add_argument("--read-all-pods", action="store_true",
                           help="read pods cluster-wide, so the pool counts what other workloads hold on GPU nodes")
    manifests.add_argument("--backend", choices=["orion", "hami", "nvidia", "dra", "kai"],
                           help="dra: also DRA RBAC (claims, claim templates, ResourceSlices, DeviceClasses) "
                                "and the presets' ResourceClaimTemplates")
    manifests.add_argument("--presets", help="with --backend dra: YAML presets to render claim templates for "
                                             "(default: the installed vGPU kernel specs); with --hub --values: "
                                             "presets to install as kernel specs in every single-user server")
    manifests.add_argument("--dra-flavor", action="append", metavar="FLAVOR",
                           help="with --backend dra: hami, mig, gpu or mig:<profile>, repeated in order of "
                                "preference (several make a firstAvailable list); default hami")
    stack = manifests.add_argument_group("the Orion stack (--orion-stack)")
    stack.add_argument("--orion-stack", action="store_true",
                       help="print instead Orion's own components: the controller (Deployment + Service), the device "
                            "plugin and Orion Server (DaemonSets on the GPU nodes), in --namespace")
    stack.add_argument("--gpu-node-selector", metavar="KEY=VALUE[,...]", help="the GPU nodes, e.g. gpu=true")
    stack.add_argument("--controller-node-selector", metavar="KEY=VALUE[,...]",
                       help="pin the controller (one per pool) to these nodes")
    stack.add_argument("--vgpus-per-gpu", type=int, metavar="N", help="vGPUs per physical GPU (VGPU); default 2")
    stack.add_argument("--cuda", choices=["10.0", "9.0"], help="CUDA of the Orion Server image; default 10.0")
    stack.add_argument("--remote", action="store_true",
                       help="scenario 3: servers for clients on other nodes (no shared memory; see --bind-net, --rdma)")
    stack.add_argument("--bind-net", metavar="DEVICE",
                       help="with --remote: the network device the servers bind (BIND_NET, e.g. ib0); "
                            "default: the node's IP (BIND_ADDR)")
    stack.add_argument("--rdma", action="store_true", help="with --remote: RDMA between clients and servers")
    for part in ("controller", "plugin", "server"):
        stack.add_argument(f"--{part}-image", metavar="NAME:TAG", help=f"the Orion {part} image")
    manifests.set_defaults(func=_manifests)

    gc = commands.add_parser("gc",
                             help="delete leftover kernel pods and Secrets (finished pods, Secrets without a pod)")
    gc.add_argument("--namespace", help="namespace of the kernel pods; default: the current context's")
    gc.add_argument("--kubeconfig", default="", help="kubeconfig file; default: in-cluster, KUBECONFIG, ~/.kube/config")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    gc.add_argument("--min-age", type=float, default=600.0,
                    help="seconds an object must exist before it is collected "
                         "(a launch in progress is never touched); default 600")
    gc.set_defaults(func=_gc)

    check = commands.add_parser(
        "check", help="check that the cluster is ready for vGPU kernels (API, RBAC, GPUs, Orion controller, network "
                      "policy, a canary kernel): one line per check, exit 0 only when every required check passes")
    check.add_argument("--namespace", help="the kernels' namespace; default: the configuration's, else the context's")
    check.add_argument("--hub", action="store_true",
                       help="hub mode: check the broker's rights, that single-user servers have none, and that "
                            "NetworkPolicy is enforced")
    check.add_argument("--config", metavar="FILE",
                       help="the Jupyter server's (or, with --hub, the broker's) Python config file, for its "
                            "c.VGPUProvisioner settings (backend, image, orion...)")
    check.add_argument("--kubeconfig", default="",
                       help="kubeconfig file; default: in-cluster, KUBECONFIG, ~/.kube/config")
    check.add_argument("--service-account", metavar="NAME",
                       help="check the rights of this service account (SubjectAccessReview, as a cluster admin) "
                            "instead of the identity running the check")
    check.add_argument("--singleuser-service-account", default="default", metavar="NAME",
                       help="with --hub: the service account of single-user servers; default 'default'")
    check.add_argument("--backend", choices=["orion", "hami", "nvidia", "dra", "kai"], help="override the backend")
    check.add_argument("--remote", action="store_true", help="Orion's remote mode (needs a controller address)")
    check.add_argument("--orion-controller", metavar="HOST:PORT", help="the Orion controller's address")
    check.add_argument("--image", help="the kernel image of the canary; default: the configuration's")
    check.add_argument("--timeout", type=float, default=120.0,
                       help="seconds the canary kernel and the probes may take to start; default 120")
    check.add_argument("--no-canary", action="store_true", help="start no canary kernel pod")
    check.add_argument("--output", choices=["text", "json"], default="text", help="text (default) or json")
    check.set_defaults(func=_check)

    broker = commands.add_parser(
        "broker", help="run the vGPU broker, a JupyterHub service that launches every server's kernels (hub mode); "
                       "options as --Broker.courses=... / --config FILE; --park-all: the running broker parks "
                       "every kernel (before maintenance), then this exits")
    broker.set_defaults(func=_broker, passes_extra=True)

    lab = commands.add_parser("lab",
                              help="start JupyterLab with vGPU kernels (local backend unless a cluster is configured)")
    lab.add_argument("--kubernetes", action="store_true",
                     help="launch kernels as pods (default when in a pod or a kubeconfig exists)")
    lab.add_argument("--presets",
                     help="YAML presets for the launcher (default: 1 vGPU · 2 GiB, 1 vGPU · 4 GiB, 2 vGPUs × 4 GiB)")
    lab.add_argument("--home",
                     help="where orion-jupyter keeps its kernel specs and config "
                          "(default ~/.local/share/orion-jupyter)")
    lab.add_argument("--workspace",
                     help="the folder JupyterLab serves, where new notebooks and the demo copies go; created "
                          "with the quickstart and demo notebooks (default ~/orion-notebooks)")
    lab.set_defaults(func=_lab, passes_extra=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) if getattr(args, "passes_extra", False) else args.func(args)
    except VGPURequestError as err:
        print(f"orion-jupyter: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
