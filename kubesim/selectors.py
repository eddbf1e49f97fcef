"""Label selectors, field selectors and resource quantities, parsed the way the API server does."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

from .errors import ApiError

Predicate = Callable[[dict], bool]

# ---------------------------------------------------------------- label selectors

_LABEL_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<not>!)\s*(?P<nkey>[^\s,!=()<>]+)"
    r"|(?P<key>[^\s,!=()<>]+)(?:"
    r"\s+(?P<setop>notin|in)\s*\((?P<values>[^)]*)\)"
    r"|\s*(?P<op>==|!=|=|>|<)\s*(?P<value>[^\s,!=()<>]*)"
    r")?"
    r")\s*(?:,|$)"
)


def parse_label_selector(text: str | None) -> Predicate:
    """'a=b,c!=d,e in (x,y),f notin (z),g,!h,n>3' -> predicate over an object's labels."""
    if not text or not text.strip():
        return lambda obj: True
    requirements: list[Callable[[dict], bool]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _LABEL_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label selector: {text!r}")
        pos = m.end()
        requirements.append(_label_requirement(m, text))
    return lambda obj: all(req((obj.get("metadata") or {}).get("labels") or {}) for req in requirements)


def _label_requirement(m: re.Match, text: str) -> Callable[[dict], bool]:
    if m.group("not"):
        key = m.group("nkey")
        return lambda labels: key not in labels
    key = m.group("key")
    if m.group("setop"):
        values = {v.strip() for v in m.group("values").split(",") if v.strip()}
        if m.group("setop") == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    op = m.group("op")
    if op is None:
        return lambda labels: key in labels
    value = m.group("value")
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    try:
        bound = int(value)
    except ValueError:
        raise ApiError(400, "BadRequest",
                       f"unable to parse requirement: {value!r} is not an integer in {text!r}") from None

    def compare(labels: dict) -> bool:
        try:
            have = int(labels[key])
        except (KeyError, ValueError):
            return False
        return have > bound if op == ">" else have < bound

    return compare


# ---------------------------------------------------------------- field selectors

FIELDS: dict[str, set[str]] = {
    "pods": {
        "metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
        "spec.serviceAccountName", "status.phase", "status.podIP", "status.nominatedNodeName",
    },
    "secrets": {"metadata.name", "metadata.namespace", "type"},
    "events": {
        "metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.namespace",
        "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion",
        "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent",
        "source", "type",
    },
    "nodes": {"metadata.name", "spec.unschedulable"},
    "namespaces": {"metadata.name", "status.phase"},
}


def field_value(obj: dict, path: str) -> str:
    if path == "source":
        return (obj.get("source") or {}).get("component", "")
    value: object = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: str | None, plural: str) -> Predicate:
    """'metadata.name=x,status.phase!=Running' (also '==') -> predicate; unknown fields are a 400."""
    if not text or not text.strip():
        return lambda obj: True
    terms: list[tuple[str, str, str]] = []
    for raw in text.split(","):
        m = re.fullmatch(r"\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*", raw)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: {text!r}; can't understand {raw!r}")
        path, op, value = m.groups()
        if path not in FIELDS.get(plural, {"metadata.name", "metadata.namespace"}):
            raise ApiError(400, "BadRequest", f'field label not supported: {path}')
        terms.append((path, op, value))

    def match(obj: dict) -> bool:
        for path, op, value in terms:
            if (field_value(obj, path) == value) != (op != "!="):
                return False
        return True

    return match


# ---------------------------------------------------------------- quantities

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE])?$")
_SUFFIX = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}


def parse_quantity(value: object) -> Fraction:
    """'100m' -> 1/10, '1Gi' -> 1073741824, 4 -> 4; ValueError when it is not a quantity."""
    if isinstance(value, bool):
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    if isinstance(value, (int, float)):
        return Fraction(value)
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(
            "quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    number, suffix = m.group(1), m.group(2) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return Fraction(number) * Fraction(10) ** int(suffix[1:])
    return Fraction(number) * _SUFFIX[suffix]


def is_extended_resource(name: str) -> bool:
    """Kubernetes' IsExtendedResourceName: a domain-prefixed name outside kubernetes.io, not requests.*"""
    if "/" not in name or name.startswith("requests."):
        return False
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def format_quantity(amount: Fraction) -> str:
    if amount.denominator == 1:
        return str(amount.numerator)
    milli = amount * 1000
    if milli.denominator == 1:
        return f"{milli.numerator}m"
    return str(float(amount))
