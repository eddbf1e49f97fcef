"""vGPU kernel specs: kernel.json files whose provisioner is orion-vgpu-provisioner.

An instructor writes the class menu once as presets (a YAML list, like KubeSpawner's profile_list)
and installs it; every entry becomes a launcher tile that says what it gets.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from .backends import get_backend
from .settings import KernelSettings
from .vgpu import VGPURequest, VGPURequestError, unbroken_phrases

PROVISIONER_NAME = "orion-vgpu-provisioner"
MAX_NAME_CHARS = 64
MAX_TEXT_CHARS = 200
MAX_PRESETS_BYTES = 256 * 1024
_SPEC_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Preset keys that are provisioner traitlets passed through kernel.json as they are.
_PASS_THROUGH = ("image", "namespace", "image_pull_policy", "node_selector", "tolerations", "cluster",
                 "cpu_request", "cpu_limit", "memory_request", "memory_limit", "extra_env", "course")


@dataclass
class VGPUKernelSpec:
    """One menu entry: what it is called, what it asks for, what it runs."""

    name: str
    request: VGPURequest
    display_name: str = ""
    description: str = ""
    backend: str | None = None
    language_name: str = "Python 3"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SPEC_NAME_RE.match(self.name) or len(self.name) > MAX_NAME_CHARS:
            raise VGPURequestError(
                "name",
                self.name,
                f'kernel spec name "{str(self.name)[:80]}" is not valid; use at most {MAX_NAME_CHARS} lower-case '
                'letters, digits, ".", "_" and "-"',
            )
        for label, text in (("display_name", self.display_name), ("description", self.description)):
            if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
                raise VGPURequestError(label, str(text)[:80], f'kernel spec {label} must be a text of at most '
                                                              f'{MAX_TEXT_CHARS} characters, not {str(text)[:80]!r}')
        if self.backend is not None:
            get_backend(self.backend)
        unknown = sorted(set(self.options) - set(_PASS_THROUGH))
        if unknown:
            raise VGPURequestError(
                unknown[0], self.options[unknown[0]],
                f'kernel spec option "{unknown[0]}" is not known; use {", ".join(_PASS_THROUGH)}',
            )
        if self.options:  # well typed, as the provisioner will read them
            from traitlets.config import Config

            probe = KernelSettings(config=Config({"VGPUProvisioner": {"trust_user_kernel_specs": True}}))
            problem = probe.apply_spec_options(self.options)
            if problem is not None:
                raise problem
        if not self.display_name:  # (a name the instructor wrote stays as written)
            self.display_name = unbroken_phrases(f"{self.language_name} · {self.request.describe()}")

    def provisioner_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"vgpus": self.request.count}
        if self.request.count:
            config["vgpu_memory"] = f"{self.request.memory_mib}Mi"
        if self.request.compute_percent is not None:
            config["compute_percent"] = self.request.compute_percent
        if self.backend:
            config["backend"] = self.backend
        config.update(self.options)
        return config

    def kernel_json(self) -> dict[str, Any]:
        return {
            "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": self.display_name,
            "language": "python",
            # A pod takes interrupts by message, a local process by signal (the provisioner sets the mode of
            # the backend it runs on; this is what other readers of the spec see).
            "interrupt_mode": "signal" if self.options.get("cluster") == "local" else "message",
            "metadata": {
                "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": self.provisioner_config()},
                "orion_jupyter": {"description": self.description, **self.request.as_dict()},
                "debugger": True,
                # ipykernel encrypts with CurveZMQ when the kernel manager's transport_encryption asks for it;
                # an image whose kernel cannot ends the launch with that reason.
                "supported_encryption": ["curve"],
            },
        }

    @classmethod
    def from_preset(cls, entry: Any, index: int = 0) -> VGPUKernelSpec:
        if not isinstance(entry, dict):
            raise VGPURequestError("presets", entry,
                                   f"preset #{index + 1} is not a mapping of display_name, vgpus, memory, ...")
        entry = dict(entry)
        display_name = entry.pop("display_name", "")
        if not isinstance(display_name, str):
            raise VGPURequestError("display_name", display_name,
                                   f"preset #{index + 1}: display_name must be a text, not {display_name!r}")
        name = entry.pop("name", None) or _name_from(display_name, index)
        request = VGPURequest.parse(entry.pop("vgpus", 1), entry.pop("memory", None), entry.pop("compute", None))
        return cls(
            name=name,
            request=request,
            display_name=display_name,
            description=entry.pop("description", ""),
            backend=entry.pop("backend", None),
            options=entry,
        )


def _name_from(display_name: str, index: int) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-")
    return f"orion-{cleaned}"[:60].strip("-") if cleaned else f"orion-preset-{index + 1}"


def _read_presets_text(path: Path) -> str:
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        raise VGPURequestError("presets", str(path), f"presets file {path} {why}; give a YAML file")
    if path.stat().st_size > MAX_PRESETS_BYTES:
        raise VGPURequestError("presets", str(path), f"presets file {path} is over {MAX_PRESETS_BYTES // 1024} KiB")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise VGPURequestError("presets", str(path), f"presets file {path} is not UTF-8 text") from None
    except OSError as err:
        raise VGPURequestError("presets", str(path), f"presets file {path} cannot be read: {err.strerror}") from None


def load_presets(path: str | Path) -> list[VGPUKernelSpec]:
    text = _read_presets_text(Path(path))
    try:
        # Aliases (&a / *a) could expand a small file into a huge kernel.json: presets are plain data.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise VGPURequestError("presets", str(path), f"presets file {path} uses YAML aliases (*name); write each "
                                                         "preset out in full")
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise VGPURequestError("presets", str(path), f"presets file {path} is not valid YAML: {err}") from None
    if not isinstance(data, list) or not data:
        raise VGPURequestError("presets", str(path), f"presets file {path} must hold a non-empty YAML list")
    specs = [VGPUKernelSpec.from_preset(entry, i) for i, entry in enumerate(data)]
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VGPURequestError("presets", duplicates[0], f'presets file {path} names "{duplicates[0]}" twice')
    return specs


def lab_home() -> Path:
    """Where `orion-jupyter lab` keeps its kernel specs (data/kernels) and server config (config/)."""
    return Path("~/.local/share/orion-jupyter").expanduser()


def listing_manager(home: Path | None = None) -> KernelSpecManager:
    """Jupyter's kernel spec folders and, where it exists, the one `orion-jupyter lab` installs into
    (outside Jupyter's own path, so the CLI lists what `lab` serves)."""
    manager = KernelSpecManager()
    lab = (home or lab_home()) / "data" / "kernels"
    if lab.is_dir() and str(lab) not in manager.kernel_dirs:
        manager.kernel_dirs = [*manager.kernel_dirs, str(lab)]
    return manager


def logo_path() -> Path | None:
    """The vGPU icon: packaged in the wheel, or the labextension's in a source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "vgpu.svg", here.parent / "labextension" / "style" / "icons" / "vgpu.svg"):
        if candidate.is_file():
            return candidate
    return None


def install(spec: VGPUKernelSpec, *, user: bool = False, prefix: str | None = None,
            manager: KernelSpecManager | None = None) -> str:
    manager = manager or KernelSpecManager()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec.kernel_json(), indent=1, ensure_ascii=False))
        logo = logo_path()
        if logo is not None:  # the launcher's card shows it instead of a letter
            shutil.copyfile(logo, Path(tmp) / "logo-svg.svg")
        return manager.install_kernel_spec(tmp, spec.name, user=user, prefix=prefix)


def install_all(specs: Iterable[VGPUKernelSpec], **kwargs: Any) -> list[str]:
    return [install(spec, **kwargs) for spec in specs]


def is_vgpu_spec(spec: Any) -> bool:
    provisioner = (getattr(spec, "metadata", None) or {}).get("kernel_provisioner") or {}
    return provisioner.get("provisioner_name") == PROVISIONER_NAME


def vgpu_specs(manager: KernelSpecManager | None = None) -> dict[str, Any]:
    """name -> KernelSpec, for the installed specs this project provisions."""
    manager = manager or KernelSpecManager()
    found = {}
    for name in manager.find_kernel_specs():
        try:
            spec = manager.get_kernel_spec(name)
        except (NoSuchKernel, ValueError, OSError):
            continue
        if is_vgpu_spec(spec):
            found[name] = spec
    return found


def spec_request(spec: Any) -> VGPURequest:
    """The request a kernel spec makes when started as it is."""
    config = spec.metadata["kernel_provisioner"].get("config", {})
    return VGPURequest.parse(config.get("vgpus", 1), config.get("vgpu_memory"), config.get("compute_percent"))


def remove(name: str, manager: KernelSpecManager | None = None) -> str:
    manager = manager or KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(name)
    except NoSuchKernel:
        raise VGPURequestError("name", name,
                               f'no kernel spec named "{name}"; see `orion-jupyter kernelspec list`') from None
    if not is_vgpu_spec(spec):
        raise VGPURequestError("name", name,
                               f'kernel spec "{name}" is not an orion-jupyter vGPU spec; '
                               "use `jupyter kernelspec remove`")
    return manager.remove_kernel_spec(name)
