"""JSON answers for tornado handlers: the server extension's and the broker's speak alike."""

from __future__ import annotations

import json
from typing import Any


class JSONReplies:
    """Mixed into a tornado RequestHandler: ``reply``, ``refuse`` (``{"message", ...}``) and ``json_body``."""

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)  # type: ignore[attr-defined]
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(json.dumps(body, default=str))  # type: ignore[attr-defined]

    def refuse(self, status: int, message: str, **extra: Any) -> None:
        self.reply({"message": message, **extra}, status)

    def json_body(self) -> dict[str, Any] | None:
        """The request's JSON object, or None after answering 400."""
        try:
            body = json.loads(self.request.body or b"{}")  # type: ignore[attr-defined]
        except (ValueError, RecursionError):
            self.refuse(400, 'the request body is not JSON; send an object like {"spec": "...", "memory": "4Gi"}')
            return None
        if not isinstance(body, dict):
            self.refuse(400, "the request body must be a JSON object")
            return None
        return body
