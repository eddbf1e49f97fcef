"""The names of the Kubernetes contract: labels, annotations and pod phases, in one place.

Labels select (they are slugs and may collide); annotations carry the exact values that decide
(the user name, the request), so readers (the server extension, kubectl, `gc`) can explain a pod.
"""

from __future__ import annotations

MANAGED_BY = "orion-jupyter"
DOMAIN = "orion-jupyter.io"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_KERNEL_ID = f"{DOMAIN}/kernel-id"
LABEL_USER = f"{DOMAIN}/user"
LABEL_COURSE = f"{DOMAIN}/course"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

ANNOTATION_USER = f"{DOMAIN}/user"
ANNOTATION_REQUEST = f"{DOMAIN}/vgpu-request"
ANNOTATION_BACKEND = f"{DOMAIN}/backend"
ANNOTATION_KERNEL_SPEC = f"{DOMAIN}/kernel-spec"
ANNOTATION_RESOURCES = f"{DOMAIN}/resources"
ANNOTATION_LAST_ACTIVITY = f"{DOMAIN}/last-activity"
ANNOTATION_STOPPED_BY = f"{DOMAIN}/stopped-by"
ANNOTATION_SERVER = f"{DOMAIN}/server"  # hub mode: the user's server (name) a kernel belongs to
# {"memory_used": bytes, "memory_source": ..., "memory_sampled_at": ...}: the kernel's last usage sample
ANNOTATION_USAGE = f"{DOMAIN}/usage"

# Pod phases after which a pod holds nothing.
TERMINAL_PHASES = ("Succeeded", "Failed")
