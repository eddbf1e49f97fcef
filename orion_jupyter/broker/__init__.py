"""Hub mode: the vGPU broker, a JupyterHub service that alone holds the Kubernetes Role.

``service`` is the broker (``orion-jupyter broker``); ``client`` is what a single-user server
uses instead of cluster credentials: a ``broker`` driver and view over the broker's HTTP API.
"""
