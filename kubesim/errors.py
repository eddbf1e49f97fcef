"""API errors, answered as metav1.Status objects."""

from __future__ import annotations

REASONS = {
    400: "BadRequest", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 409: "AlreadyExists",
    410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


class ApiError(Exception):
    def __init__(self, code: int, reason: str | None = None, message: str = "", details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason or REASONS.get(code, "Unknown")
        self.message = message
        self.details = details

    def status(self) -> dict:
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural})


def invalid(kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """causes: (field, reason e.g. 'FieldValueRequired', message such as 'Required value: ...')."""
    text = "; ".join(f"{fld}: {msg}" for fld, _, msg in causes)
    if len(causes) > 1:
        text = f"[{', '.join(f'{fld}: {msg}' for fld, _, msg in causes)}]"
    details = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": reason, "message": msg, "field": fld} for fld, reason, msg in causes],
    }
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}', details)
