"""Running code in a kernel from a test, through jupyter_client's own client."""

from jupyter_client.manager import AsyncKernelManager


async def run_code(client, code: str) -> str:
    """Execute ``code``; its stdout, after checking that it ran without error."""
    chunks: list[str] = []
    reply = await client.execute_interactive(
        code, timeout=60,
        output_hook=lambda msg: chunks.append(msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(chunks).strip()


async def run_in_kernel(km: AsyncKernelManager, code: str) -> str:
    """``run_code`` with a client of its own, for a kernel already started."""
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        return await run_code(client, code)
    finally:
        client.stop_channels()
