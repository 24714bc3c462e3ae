"""Metric thresholds for search: ``{"accuracy": (">=", 0.9)}`` or ``"accuracy>=0.9"``."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from ferry.client._errors import InputError

OPERATORS = (">=", "<=", "==", ">", "<")
_THRESHOLD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(>=|<=|==|>|<)\s*(\S+)\s*$")

MetricFilters = Mapping[str, tuple[str, float]] | Iterable[str]


def parse_threshold(text: str) -> tuple[str, str, float]:
    """Split ``accuracy>=0.9`` into (name, operator, value); InputError names what is wrong."""
    match = _THRESHOLD.match(text)
    if not match:
        raise InputError(
            f"malformed metric filter {text!r}: expected NAME OP NUMBER with OP one "
            f"of {', '.join(OPERATORS)}, e.g. 'accuracy>=0.9'"
        )
    name, op, raw = match.groups()
    return name, op, _number(raw, text)


def _number(raw: str, context: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"malformed metric filter {context!r}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"malformed metric filter {context!r}: {raw!r} is not a finite number")
    return value


def metric_params(filters: MetricFilters | None) -> list[str]:
    """Normalise either form into the repeated ``metric=`` query values the server expects."""
    if filters is None:
        return []
    if isinstance(filters, Mapping):
        out = []
        for name, spec in filters.items():
            if not (isinstance(spec, tuple) and len(spec) == 2):
                raise InputError(
                    f"metric filter for {name!r} must be (operator, value), "
                    f"e.g. ('>=', 0.9); got {spec!r}"
                )
            op, value = spec
            out.append(_format(*parse_threshold(f"{name}{op}{value}")))
        return out
    if isinstance(filters, str):
        filters = [filters]
    return [_format(*parse_threshold(text)) for text in filters]


def _format(name: str, op: str, value: float) -> str:
    return f"{name}{op}{value!r}"
