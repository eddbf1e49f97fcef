"""What the broker asks JupyterHub, with its own service token: who a token is, their groups, and
which servers are running (for reaping kernels whose server is gone)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("orion_jupyter.broker")


class HubClient:
    """``cache_seconds``: how long a user's groups and servers are reused (an instructor removed from the
    instructors group loses the class view within it)."""

    def __init__(self, api_url: str, token: str, cache_seconds: float = 5.0):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.cache_seconds = cache_seconds
        self._user_models: dict[str, tuple[float, dict[str, Any]]] = {}

    async def _get(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"token {token or self.token}",
                   "Accept": "application/jupyterhub-pagination+json, application/json"}
        request = HTTPRequest(f"{self.api_url}/{path.lstrip('/')}", headers=headers, request_timeout=15)
        response = await AsyncHTTPClient().fetch(request)
        return json.loads(response.body or b"null")

    async def identify(self, token: str) -> dict[str, Any] | None:
        """The hub's model of a token's owner (name, scopes), or None when the hub does not know it."""
        try:
            model = await self._get("user", token=token)
        except HTTPClientError as err:
            if err.code in (401, 403, 404):
                return None
            raise
        return model if isinstance(model, dict) and model.get("kind", "user") == "user" else None

    async def _user(self, name: str) -> dict[str, Any]:
        cached = self._user_models.get(name)
        if cached and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        model = await self._get(f"users/{quote(name, safe='')}")
        self._user_models[name] = (time.monotonic(), model)
        return model

    async def groups(self, name: str) -> list[str]:
        return sorted((await self._user(name)).get("groups") or [])

    async def servers(self, name: str) -> set[str]:
        """The names of a user's servers the hub knows ('' is the default server)."""
        return set((await self._user(name)).get("servers") or {})

    async def members(self, group: str) -> list[str]:
        """The users of a hub group (read:groups, or read:users:groups through the users list)."""
        return sorted(user["name"] for user in await self._users() if group in (user.get("groups") or []))

    async def running_servers(self) -> set[tuple[str, str]]:
        """(user, server name) of every server the hub has running or starting."""
        return {(user["name"], server_name) for user in await self._users("include_stopped_servers=false&")
                for server_name in (user.get("servers") or {})}

    async def _users(self, query: str = "") -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = []
        while True:
            page = await self._get(f"users?{query}offset={len(users)}&limit=200")
            items = page.get("items", []) if isinstance(page, dict) else page
            users.extend(items)
            if not isinstance(page, dict) or not page.get("_pagination", {}).get("next") or not items:
                return users
