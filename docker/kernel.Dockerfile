# The kernel image: Python, ipykernel, the widget and the demos, on CUDA.
#   docker build -f docker/kernel.Dockerfile -t registry.example.org/orion-kernel:py3.12 .
# orion-jupyter is not on PyPI: the first stage builds its wheel from this clone (Node.js builds the
# JupyterLab extension inside it); the image gets the wheel, never the sources or Node.js.
FROM node:22-bookworm-slim AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /build && /build/bin/pip wheel --no-cache-dir --no-deps /src -w /wheels

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=wheel /wheels /wheels
# torch and torchvision: the demos extra's range (a CUDA 12 build from PyPI).
RUN pip install --no-cache-dir --find-links /wheels ipykernel ipywidgets "orion-jupyter[demos]" && rm -rf /wheels
# Orion: add the Orion client runtime of your controller's version here (it replaces libcudart).
# Kernel pods run as 1000:100 (c.VGPUProvisioner.run_as_user / run_as_group); Ubuntu's own uid 1000 makes way.
RUN userdel -r ubuntu 2>/dev/null; useradd -u 1000 -g 100 -m jovyan
USER 1000
WORKDIR /home/jovyan
