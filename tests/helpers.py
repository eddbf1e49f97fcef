"""Waiting in tests: one polling helper instead of hand-written loops and sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def eventually(probe: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *,
               until: Callable[[Any], Any] = bool, retry_on: tuple[type[BaseException], ...] = (),
               message: str | Callable[[], str] = "") -> Any:
    """Calls ``probe()`` every ``interval`` seconds until ``until(value)`` is true; returns that value.

    An exception in ``retry_on`` counts as a value that is not there yet; any other exception (an
    ``assert`` inside the probe included) fails at once. After ``timeout`` seconds: AssertionError with
    ``message`` (a string, or a callable for details read then) and the last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except retry_on as exc:
            value = exc
        else:
            if until(value):
                return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, value, message))
        time.sleep(interval)


async def eventually_async(probe: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *,
                           until: Callable[[Any], Any] = bool, retry_on: tuple[type[BaseException], ...] = (),
                           message: str | Callable[[], str] = "") -> Any:
    """``eventually`` on the event loop: ``probe`` may be a coroutine function (or return an awaitable)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except retry_on as exc:
            value = exc
        else:
            if until(value):
                return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, value, message))
        await asyncio.sleep(interval)


def _timed_out(timeout: float, value: Any, message: str | Callable[[], str]) -> str:
    text = message() if callable(message) else message
    return f"{text + ': ' if text else ''}timed out after {timeout:g} s; last value: {value!r}"


def k8s_config(namespace: str = "class-ai101", **provisioner: Any) -> Any:
    """A VGPUProvisioner config for kernels on the simulated cluster (KUBECONFIG points at it)."""
    from traitlets.config import Config

    config = Config()
    config.VGPUProvisioner.cluster = "kubernetes"
    config.VGPUProvisioner.namespace = namespace
    config.VGPUProvisioner.launch_timeout = 60.0
    for key, value in provisioner.items():
        setattr(config.VGPUProvisioner, key, value)
    return config


def managed_objects(cluster: Any, kind: str, namespace: str = "class-ai101") -> list[dict]:
    """This project's objects of ``kind`` in ``namespace`` of the simulated cluster."""
    return [o for o in cluster.objects(kind, namespace)
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "orion-jupyter"]


async def fetch_json(jp_fetch: Callable[..., Any], *path: str, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON body or None) of ``jp_fetch(*path, **kwargs)``, an error status included."""
    import json

    from tornado.httpclient import HTTPClientError

    try:
        response = await jp_fetch(*path, **kwargs)
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body) if err.response and err.response.body else None
    return response.code, json.loads(response.body) if response.body else None


async def failed_launch(km: Any, script: Any, body: str) -> Any:
    """Start ``km``'s kernel with ``script`` (a path) written as a shell script standing in for the kernel
    image's python; the launch must fail: its KernelLaunchError."""
    import pytest

    from orion_jupyter.errors import KernelLaunchError

    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    with pytest.raises(KernelLaunchError) as caught:
        await km.start_kernel()
    return caught.value
