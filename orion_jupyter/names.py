"""The names of the Kubernetes contract: labels, annotations and pod phases, in one place.

Labels select (they are slugs and may collide); annotations carry the exact values that decide
(the user name, the request), so readers (the server extension, kubectl, `gc`) can explain a pod.
"""

from __future__ import annotations

import hashlib
import re

MANAGED_BY = "orion-jupyter"
DOMAIN = "orion-jupyter.io"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_KERNEL_ID = f"{DOMAIN}/kernel-id"
LABEL_USER = f"{DOMAIN}/user"
LABEL_COURSE = f"{DOMAIN}/course"
LABEL_WARM = f"{DOMAIN}/warm"  # a warm kernel's pool ("roster-<course>" for a roster's); gone once claimed
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

ANNOTATION_USER = f"{DOMAIN}/user"
ANNOTATION_COURSE = f"{DOMAIN}/course"  # the exact hub group (the label is only its slug)
ANNOTATION_REQUEST = f"{DOMAIN}/vgpu-request"
ANNOTATION_BACKEND = f"{DOMAIN}/backend"
ANNOTATION_KERNEL_SPEC = f"{DOMAIN}/kernel-spec"
ANNOTATION_RESOURCES = f"{DOMAIN}/resources"
ANNOTATION_LAST_ACTIVITY = f"{DOMAIN}/last-activity"
ANNOTATION_STOPPED_BY = f"{DOMAIN}/stopped-by"
# The snapshot a stopped kernel was parked as (hub mode: the broker parked it into its user's storage).
ANNOTATION_PARKED = f"{DOMAIN}/parked-snapshot"
ANNOTATION_SERVER = f"{DOMAIN}/server"  # hub mode: the user's server (name) a kernel belongs to
# {"memory_used": bytes, "memory_source": ..., "memory_sampled_at": ...}: the kernel's last usage sample
ANNOTATION_USAGE = f"{DOMAIN}/usage"

ANNOTATION_WARM_SHAPE = f"{DOMAIN}/warm-shape"
ANNOTATION_CLAIMED = f"{DOMAIN}/claimed-at"
# On a broker's kernel pod until its server is told it is ready: a pod that still has it after its launch
# ended (the broker was killed) is no server's kernel, and the reaper deletes it.
ANNOTATION_LAUNCHING = f"{DOMAIN}/launching"

# Pod phases after which a pod holds nothing.
TERMINAL_PHASES = ("Succeeded", "Failed")

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def slug(text: str, limit: int) -> str:
    """A DNS-1123 fragment of ``text``; a short hash keeps distinct names distinct after cleaning."""
    cleaned = _SLUG_RE.sub("-", text.lower()).strip("-")
    if cleaned == text and 0 < len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    head = cleaned[: max(limit - 9, 0)].strip("-")
    return f"{head}-{digest}" if head else digest
