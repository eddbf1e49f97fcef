"""CurveZMQ between the server and kernel pods, as jupyter_client's transport_encryption asks for it."""

import base64
import json
import sys

import pytest
import zmq
import zmq.asyncio
from jupyter_client.manager import AsyncKernelManager

from orion_jupyter.k8s.manifests import CURVE_UNSUPPORTED
from tests.helpers import failed_launch, k8s_config
from tests.helpers import managed_objects as kernel_objects
from tests.kernel_io import run_code


def required(**provisioner):
    config = k8s_config(**provisioner)
    config.KernelManager.transport_encryption = "required"
    return config


def subscriber(context, url, server_key=None):
    socket = context.socket(zmq.SUB)
    socket.linger = 0
    if server_key is not None:
        socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
        socket.curve_serverkey = server_key
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(url)
    return socket


async def iopub_text(socket, client, text):
    """Print ``text`` in the kernel until ``socket`` sees it; what it received."""
    seen = b""
    for _ in range(50):
        await run_code(client, f"print({text!r})")
        while await socket.poll(timeout=200):
            seen += b"".join(await socket.recv_multipart())
        if text.encode() in seen:
            break
    return seen


@pytest.mark.parametrize("policy", ["required", "disabled"])
async def test_kernel_pod_traffic_is_encrypted_when_required(sim_cluster, vgpu_spec, policy):
    config = k8s_config()
    config.KernelManager.transport_encryption = policy
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-curve", 1, "4Gi"), config=config)
    await km.start_kernel()
    context = zmq.asyncio.Context()
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        pod, secret = kernel_objects(sim_cluster, "pods")[0], kernel_objects(sim_cluster, "secrets")[0]
        url = f"tcp://{km.ip}:{km.iopub_port}"
        eavesdropper = subscriber(context, url)  # a classmate on the pod network, without the key
        if policy == "disabled":  # the control: plaintext is readable by anyone who reaches the pod
            assert km.curve_secretkey is None
            assert b"for-everyone" in await iopub_text(eavesdropper, client, "for-everyone")
            return
        assert km.curve_publickey and km.curve_secretkey
        assert km.curve_secretkey.decode() not in json.dumps(pod)  # the keys travel in the Secret only
        connection = json.loads(base64.b64decode(secret["data"]["connection.json"]))
        assert (connection["curve_publickey"], connection["curve_secretkey"]) == \
            (km.curve_publickey.decode(), km.curve_secretkey.decode())
        holder = subscriber(context, url, server_key=km.curve_publickey)  # what the key allows
        assert b"only-for-the-key-holder" in await iopub_text(holder, client, "only-for-the-key-holder")
        # the same messages, published while both were connected, never reached the plaintext subscriber
        assert await eavesdropper.poll(timeout=0) == 0
    finally:
        client.stop_channels()
        await km.shutdown_kernel()
        context.destroy(linger=0)
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []


async def test_required_against_a_kernel_that_cannot_encrypt_fails_at_once(sim_cluster, vgpu_spec, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(  # an image whose pyzmq was built without libsodium
        "import zmq\n_has = zmq.has\nzmq.has = lambda feature: False if feature == 'curve' else _has(feature)\n")
    python = tmp_path / "python-without-curve"
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-curve", 1, "4Gi"),
                            config=required(kernel_python=str(python)))
    error = await failed_launch(km, python, f"PYTHONPATH={site} exec {sys.executable} \"$@\"")
    assert error.reason == "exited"
    assert CURVE_UNSUPPORTED in str(error)
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []
