"""orion-jupyter: vGPU kernels for Jupyter on Kubernetes or one GPU machine."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict]:
    from .server import OrionJupyter  # lazy: kernel images import this package without jupyter_server

    return [{"module": "orion_jupyter.server", "app": OrionJupyter}]
