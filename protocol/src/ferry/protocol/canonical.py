"""Canonical JSON: the exact bytes that Ferry signs (specified in docs/protocol.md).

Rules: objects with keys sorted by Unicode code point, no insignificant white
space, UTF-8 with only the escapes JSON requires, integers only (no floats),
integers within ±(2**53 - 1) so that every JSON implementation reads them exactly.
"""

from __future__ import annotations

import json
from typing import Any

from ferry.protocol.errors import MalformedError

MAX_SAFE_INTEGER = 2**53 - 1


def _check(value: Any, path: str) -> None:
    """Refuse anything that has no single canonical encoding."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        if isinstance(value, str):
            _check_string(value, path)
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise MalformedError(f"{path}: integer {value} is outside ±(2**53-1)")
        return
    if isinstance(value, float):
        raise MalformedError(f"{path}: floats are not allowed in signed documents")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedError(f"{path}: object key {key!r} is not a string")
            _check_string(key, path)
            _check(item, f"{path}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    raise MalformedError(f"{path}: {type(value).__name__} cannot be encoded as JSON")


def _check_string(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError(f"{path}: string is not valid Unicode (lone surrogate)") from exc


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON bytes, or raise ``MalformedError``."""
    _check(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise MalformedError(f"duplicate key {key!r}")
        result[key] = item
    return result


def _no_constant(name: str) -> Any:
    raise MalformedError(f"{name} is not valid JSON")


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON strictly: UTF-8, no duplicate keys, no NaN/Infinity.

    Floats are parsed (status reports may carry none, but unsigned documents may),
    and refused later by ``canonical_json`` when the document is signed.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise MalformedError("document is not UTF-8") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedError(f"document is not valid JSON: {exc}") from exc
