"""orion-jupyter: vGPU kernels for Jupyter on Kubernetes or one GPU machine."""

__version__ = "0.1.0"
