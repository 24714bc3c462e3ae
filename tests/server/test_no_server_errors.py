"""Inputs that fuzzing turned into 500s, and the classes behind them: integers past
SQLite's 64 bits in paths and queries, and Unicode digits that `str.isdigit` accepts
but `int` refuses."""

from __future__ import annotations

from typing import Any

import pytest

from ferry.server.core.numbers import MAX_ROW_ID, ascii_int
from tests.server.conftest import API, Harness

HUGE = "8873769497333828943872"


@pytest.mark.parametrize(
    "method, path",
    [
        ("DELETE", f"/enrollment-tokens/{HUGE}"),
        ("DELETE", f"/tokens/{HUGE}"),
        ("DELETE", f"/webhooks/{HUGE}"),
        ("GET", f"/keyring/{HUGE}"),
        ("GET", f"/devices?offset={HUGE}"),
        ("GET", f"/versions?offset={HUGE}"),
    ],
)
def test_an_integer_past_64_bits_is_422_not_500(h: Harness, method: str, path: str) -> None:
    r = h.client.request(method, f"{API}{path}", headers=h.admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    "path",
    [
        "/rollouts/%C2%B9",
        "/rollouts/r-%C2%B2%C2%B3",
        "/models/vision/resnet/versions/%C2%B9",
        "/rollouts/%D9%A3",
    ],
)  # superscripts, Arabic-Indic three
def test_unicode_digits_are_not_numbers(h: Harness, path: str) -> None:
    r = h.client.get(f"{API}{path}", headers=h.admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_ascii_int_takes_ascii_digits_only() -> None:
    assert ascii_int("42") == 42 and ascii_int("007") == 7
    for text in ("¹", "٣", "", "-1", "+1", " 1", "1_000", "9" * 17, str(MAX_ROW_ID + 1)):
        assert ascii_int(text) is None, text


def _integer_parameters(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                spec = param.get("schema", {})
                if spec.get("type") == "integer":
                    found.append((f"{method.upper()} {path}", param["name"], spec))
    return found


def test_every_integer_path_and_query_parameter_is_bounded(h: Harness) -> None:
    """The class, not the instance: any integer an URL carries has a documented maximum
    that fits SQLite's (and PostgreSQL's) 64-bit integers."""
    params = _integer_parameters(h.client.get("/openapi.json").json())
    assert len(params) >= 8
    unbounded = [
        (where, name) for where, name, spec in params if spec.get("maximum", 2**63) > MAX_ROW_ID
    ]
    assert unbounded == []
