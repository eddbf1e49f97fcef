"""broker/idle.py's reading of a kernel's iopub, on its own: only answers to shell requests are activity and
set the execution state (as jupyter_server reads them); a probe on the control channel is neither, and a
malformed but signed message changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orion_jupyter.broker.idle import BrokerKernels, Observed


def status(state, parent: str | None = "execute_request") -> dict:
    return {"header": {"msg_type": "status"}, "parent_header": {"msg_type": parent} if parent else {},
            "content": {"execution_state": state} if isinstance(state, str) else state}


def observed() -> Observed:
    return Observed("pod", "ann", "AI_101", 1, last_activity=datetime.now(UTC) - timedelta(minutes=5))


def test_a_cell_makes_the_kernel_busy_and_active():
    kernel = observed()
    before = kernel.last_activity
    assert BrokerKernels._observe(kernel, status("busy")) is True
    assert kernel.execution_state == "busy" and kernel.last_activity > before


def test_a_usage_probe_on_the_control_channel_is_neither_activity_nor_state():
    kernel = observed()
    before = kernel.last_activity
    for parent in ("usage_request", "kernel_info_request", None):
        assert BrokerKernels._observe(kernel, status("busy", parent)) is False
        assert BrokerKernels._observe(kernel, status("idle", parent)) is False
    assert kernel.execution_state == "idle" and kernel.last_activity == before
    BrokerKernels._observe(kernel, status("busy"))  # a long cell runs...
    assert BrokerKernels._observe(kernel, status("idle", "usage_request")) is False
    assert kernel.execution_state == "busy"  # ...and a usage sample meanwhile does not make it idle


def test_a_malformed_status_changes_nothing():
    kernel = observed()
    for content in (["idle"], {"execution_state": 7}, {"execution_state": "sleepy"}, "busy-but-a-text"):
        message = status("x")
        message["content"] = content
        assert BrokerKernels._observe(kernel, message) is False
    assert kernel.execution_state == "idle"


def test_the_cull_fields_the_rules_answer_are_the_ones_the_wire_names():
    from orion_jupyter.core.idle import Culler, CullRules
    from orion_jupyter.progress import ProgressLog
    from orion_jupyter.wire import CULL_FIELDS

    class NoKernels:
        def kernel_ids(self): return []
        def activity(self, kernel_id): return None
        def owner(self, kernel_id): return None
        def parks(self, kernel_id): return False
        async def stop_idle(self, kernel_id): raise AssertionError("nothing to stop")

    fields = Culler(NoKernels(), ProgressLog(), CullRules()).fields("k1")
    assert tuple(fields) == CULL_FIELDS and fields["cull_at"] is None and fields["exempt"] is False
