"""What the broker asks JupyterHub, with its own service token: who a token is, their groups, and
which servers are running (for reaping kernels whose server is gone)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import aiohttp
from tornado.httpclient import HTTPClientError

from ..loop_sessions import LoopSessions

log = logging.getLogger("orion_jupyter.broker")
MAX_CACHED_TOKENS = 10_000
TIMEOUT = aiohttp.ClientTimeout(total=15)


class HubClient:
    """``cache_seconds``: how long a user's groups and servers are reused (an instructor removed from the
    instructors group keeps the class view that long); ``token_cache_seconds``: how long a token's owner is
    (a revoked token still passes that long; JupyterHub's own HubAuth reuses it for 5 minutes)."""

    def __init__(self, api_url: str, token: str, cache_seconds: float = 5.0, token_cache_seconds: float = 5.0):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.cache_seconds = cache_seconds
        self.token_cache_seconds = token_cache_seconds
        self._user_models: dict[str, tuple[float, dict[str, Any]]] = {}
        # sha256 of a token -> (when, its owner's model); only tokens the hub knew, so guessing fills nothing
        self._owners: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()
        # kept-alive connections: a launch asks the hub twice (who the token is, their groups and servers)
        self.sessions = LoopSessions(lambda: aiohttp.ClientSession(timeout=TIMEOUT, trust_env=False))

    async def _get(self, path: str, token: str | None = None) -> Any:
        """GET ``path`` of the hub's API; an error status raises HTTPClientError (its ``code``), the hub not
        answering OSError or TimeoutError, a body not JSON ValueError."""
        headers = {"Authorization": f"token {token or self.token}",
                   "Accept": "application/jupyterhub-pagination+json, application/json"}
        try:
            async with self.sessions.get().get(f"{self.api_url}/{path.lstrip('/')}", headers=headers) as response:
                body = await response.read()
                if response.status >= 400:
                    raise HTTPClientError(response.status, response.reason)
        except aiohttp.ClientError as err:
            raise OSError(f"the hub's API at {self.api_url}: {err or type(err).__name__}") from None
        return json.loads(body or b"null")

    async def identify(self, token: str, fresh: bool = False) -> dict[str, Any] | None:
        """The hub's model of a token's owner (name, scopes), or None when the hub does not know it (``fresh``:
        asked now, never the answer kept)."""
        key = hashlib.sha256(token.encode()).digest()
        cached = self._owners.get(key)
        if cached and not fresh and time.monotonic() - cached[0] < self.token_cache_seconds:
            return cached[1]
        try:
            model = await self._get("user", token=token)
        except HTTPClientError as err:
            if err.code in (401, 403, 404):
                self._owners.pop(key, None)
                return None
            raise
        if not (isinstance(model, dict) and model.get("kind", "user") == "user"):
            return None
        self._owners[key] = (time.monotonic(), model)
        self._owners.move_to_end(key)
        while len(self._owners) > MAX_CACHED_TOKENS:
            self._owners.popitem(last=False)
        return model

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
