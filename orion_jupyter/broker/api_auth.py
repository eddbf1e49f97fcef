"""Every broker API handler's base: the caller's hub token checked before any body is read, their groups.

No request body is read before its token is checked (the handlers stream their bodies, and prepare
authenticates first); none larger than c.Broker.max_body_bytes is read at all.
"""

from __future__ import annotations

import re
from typing import Any

from tornado import web
from tornado.httpclient import HTTPClientError

from ..jsonapi import JSONReplies
from ..k8s.view import pod_user
from .service import Broker

HUB_ERRORS = (HTTPClientError, OSError, TimeoutError, ValueError)  # the hub down, slow or answering nonsense


@web.stream_request_body  # prepare (the token) runs before any of the body is read
class BrokerHandler(JSONReplies, web.RequestHandler):
    user = ""
    token = ""
    groups: list[str] | None = None  # the caller's hub groups (None: not asked yet, see needs_groups)
    needs_groups = True  # asked of the hub before every request; else by load_groups() where needed

    @property
    def broker(self) -> Broker:
        return self.settings["broker"]

    def check_xsrf_cookie(self) -> None:
        """Token-authenticated API: no cookies, no cross-site forms."""

    def data_received(self, chunk: bytes) -> None:
        if not self._finished:  # refused already (no token): what still arrives is dropped
            self._chunks.append(chunk)

    def json_body(self) -> dict[str, Any] | None:
        self.request.body = b"".join(self._chunks)
        return super().json_body()

    def given_token(self) -> str | None:
        match = re.match(r"(?:token|bearer)\s+(.+)", self.request.headers.get("Authorization", ""), re.IGNORECASE)
        return match.group(1) if match else None

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        token = self.given_token()
        if not token:
            self.refuse(401, "a hub token is needed: Authorization: token <JUPYTERHUB_API_TOKEN>")
            return
        try:
            model = await self.may_use(token)
            if model is not None and self.needs_groups:
                self.groups = await self.broker.hub.groups(model["name"])
        except HUB_ERRORS as err:
            self.refuse(503, f"JupyterHub does not answer ({err}), so the broker cannot tell who you are; "
                             "try again in a minute", reason="hub-unavailable")
            return
        if model is None:
            self.refuse(403, f"this token may not use the vGPU broker (it needs access:services!service="
                             f"{self.broker.service_name})")
            return
        self.user, self.token = model["name"], token

    async def may_use(self, token: str, fresh: bool = False) -> dict[str, Any] | None:
        """The hub's model of the token's owner when the token may use the broker, else None (``fresh``: asked
        of the hub now, not as it answered lately)."""
        model = await self.broker.hub.identify(token, fresh)
        allowed = {"access:services", f"access:services!service={self.broker.service_name}"}
        return model if model is not None and allowed & set(model.get("scopes") or []) else None

    async def load_groups(self) -> bool:
        """Ask the hub for the caller's groups now (a handler with needs_groups False); False: refused (503)."""
        try:
            self.groups = await self.broker.hub.groups(self.user)
        except HUB_ERRORS as err:
            self.refuse(503, f"JupyterHub does not answer ({err}); try again in a minute", reason="hub-unavailable")
            return False
        return True

    @property
    def instructor(self) -> bool:
        if self.groups is None:
            raise RuntimeError("the caller's groups were not asked of the hub (load_groups first)")
        return self.broker.is_instructor(self.user, self.groups)

    def own_pod(self, pod_name: str) -> dict | None:
        pod = self.broker.cluster.pod(pod_name)
        return pod if pod is not None and (pod_user(pod) == self.user or self.instructor) else None
