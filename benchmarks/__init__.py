"""Benchmarks of orion-jupyter: commands that measure and report, not tests that assert timings.

Run ``python -m benchmarks`` from the repository root (``--help`` for the options). Sections:

* ``launch``: a vGPU kernel on the simulated cluster against jupyter_client's local provisioner.
* ``burst``: many kernels started at once through a real Jupyter server.
* ``scale``: the server extension's views with thousands of kernel pods and a hundred nodes.
* ``university``: 1,000 students in 20 courses on 250 vGPUs through one broker; 20,000 pods in its watch.
* ``demos``: MNIST images/s through the widget's runner against a plain loop (needs CUDA).

The simulated cluster is ``kubesim``; it runs inside the benchmark process, so the
benchmarks can timestamp what happens in it without any hook in the product code.
"""
