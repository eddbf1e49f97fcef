# The hub image with the broker (hub mode): zero-to-jupyterhub's hub, plus orion-jupyter.
#   docker build -f docker/broker.Dockerfile -t registry.example.org/k8s-hub-orion:4.2.0 .
# then `orion-jupyter manifests --hub --values --broker-image registry.example.org/k8s-hub-orion:4.2.0`.
# The first stage builds orion-jupyter's wheel from this clone (it is not on PyPI).
FROM node:22-bookworm-slim AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /build && /build/bin/pip wheel --no-cache-dir --no-deps /src -w /wheels

FROM quay.io/jupyterhub/k8s-hub:4.2.0
USER root
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --find-links /wheels orion-jupyter && rm -rf /wheels
USER 1000
