"""What `orion-jupyter check` found, as `linkerd check` says it: a line per check, ✔ / ✘ / ‼, a hint to act on.

Text for people (one category heading, then its lines; a hint under each ✘ and ‼), or JSON
(``--output json``) in linkerd's shape: ``{"success", "categories": [{"categoryName", "checks":
[{"description", "result": "success|error|warning", "hint", "error", "details"}]}]}``. The run
succeeds (exit 0) only when no required check failed; a warning (‼) never fails it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SYMBOLS = {"success": "✔", "error": "✘", "warning": "‼"}


@dataclass
class CheckResult:
    category: str
    description: str
    result: str  # success | error | warning
    hint: str = ""
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"description": self.description, "result": self.result}
        if self.hint:
            out["hint"] = self.hint
        if self.error:
            out["error"] = self.error
        if self.details:
            out["details"] = self.details
        return out


class Report:
    """Collects results in order; ``echo`` (text output) prints each as it comes, so a slow check shows progress."""

    def __init__(self, echo: Callable[[str], None] | None = None):
        self.results: list[CheckResult] = []
        self._echo = echo
        self._category = ""

    def add(self, category: str, description: str, result: str, hint: str = "", error: str = "",
            **details: Any) -> CheckResult:
        item = CheckResult(category, description, result, hint, error, details)
        self.results.append(item)
        if self._echo is not None:
            if category != self._category:
                self._echo(("\n" if self._category else "") + f"{category}\n{'-' * len(category)}")
                self._category = category
            self._echo(text_line(item))
        return item

    def ok(self, category: str, description: str, **details: Any) -> CheckResult:
        return self.add(category, description, "success", **details)

    def fail(self, category: str, description: str, hint: str, error: str = "", **details: Any) -> CheckResult:
        return self.add(category, description, "error", hint, error, **details)

    def warn(self, category: str, description: str, hint: str, error: str = "", **details: Any) -> CheckResult:
        return self.add(category, description, "warning", hint, error, **details)

    @property
    def success(self) -> bool:
        return not any(r.result == "error" for r in self.results)

    def summary(self) -> str:
        return f"\nStatus check results are {'✔' if self.success else '✘'}"

    def as_json(self) -> str:
        categories: dict[str, list[dict]] = {}
        for item in self.results:
            categories.setdefault(item.category, []).append(item.as_dict())
        return json.dumps({"success": self.success,
                           "categories": [{"categoryName": name, "checks": checks}
                                          for name, checks in categories.items()]}, indent=2, ensure_ascii=False)


def text_line(item: CheckResult) -> str:
    lines = [f"{SYMBOLS[item.result]} {item.description}"]
    if item.error:
        lines += [f"    {line}" for line in item.error.splitlines()]
    if item.hint:
        lines.append(f"    hint: {item.hint}")
    return "\n".join(lines)
