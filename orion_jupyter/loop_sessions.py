"""One aiohttp session per event loop, for a client used from several (a Jupyter server's loop, each
test's): a session and its kept-alive connections belong to the loop they were made on."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

import aiohttp


class LoopSessions:
    """``get()``: the running loop's session, made by ``make`` on first use (and again after it closed)."""

    def __init__(self, make: Callable[[], aiohttp.ClientSession]):
        self.make = make
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = \
            weakref.WeakKeyDictionary()

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._sessions[loop] = self.make()
        return session

    async def aclose(self) -> None:
        """Close the running loop's session."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    def close(self) -> None:
        """Close every loop's session: on its loop where that still runs; a stopped loop's is let go."""
        for loop, session in list(self._sessions.items()):
            self._sessions.pop(loop, None)
            if loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(session.close(), loop)
            else:
                session.detach()


__all__ = ["LoopSessions"]
