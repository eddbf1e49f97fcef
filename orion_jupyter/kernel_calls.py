"""Ask a running kernel to park or restore its namespace: one silent execute request whose user
expression runs ``orion_jupyter.snapshot.answer`` (nothing reaches the user's history).

Used by the server (park and resume through its kernel manager) and by the broker (idle culling and
instructors park a class's kernels over the kernel's own shell port). The kernel is the student's:
its answer is read as data (JSON, or a Python literal never evaluated), and it gets a time limit.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from .snapshot import SnapshotError


def answer_of(data: dict[str, Any]) -> dict[str, Any]:
    """The kernel's report from a user expression's display data: its JSON, or its plain text where a
    kernel shows no JSON (a literal, never evaluated)."""
    if isinstance(data.get("application/json"), dict):
        return data["application/json"]
    try:
        value = ast.literal_eval(data.get("text/plain", ""))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise SnapshotError("kernel", "the kernel's answer could not be read; it keeps running")
    return value


async def call_snapshot(client: Any, function: str, arguments: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``snapshot.<function>(**arguments)`` in the kernel of ``client`` (an asyncio kernel client whose
    shell channel is started); a refusal or fault is a ``SnapshotError`` that says the kernel keeps running."""
    expression = (f"__import__('orion_jupyter.snapshot', fromlist=['answer'])"
                  f".answer({function!r}, {json.dumps(arguments)!r})")
    try:
        reply = await client.execute("", silent=True, store_history=False, user_expressions={"orion": expression},
                                     reply=True, timeout=timeout)
    except TimeoutError:
        raise SnapshotError("timeout", f"the kernel did not {function} in {timeout:g} s; it keeps running") from None
    content = reply.get("content") if isinstance(reply, dict) else None
    result = ((content or {}).get("user_expressions") or {}).get("orion") or {}
    if not isinstance(result, dict) or result.get("status") != "ok":
        result = result if isinstance(result, dict) else {}
        raise SnapshotError("kernel", f"the kernel could not {function} ({result.get('ename', 'no answer')}: "
                                      f"{result.get('evalue', (content or {}).get('evalue', ''))}); its image "
                                      "needs orion-jupyter and dill. The kernel keeps running")
    answer = answer_of(result.get("data") or {})
    if "error" in answer:
        raise SnapshotError(str(answer.get("reason", "kernel")), str(answer["error"]))
    return answer
