"""Canonical JSON: the byte-for-byte vectors of docs/protocol.md, and what it refuses."""

import json
from pathlib import Path

import pytest

from ferry.protocol.canonical import canonical_json, parse_json
from ferry.protocol.errors import MalformedError

VECTORS = json.loads((Path(__file__).parent / "canonical_vectors.json").read_text("utf-8"))


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_encodes_to_the_specified_bytes(vector: dict) -> None:
    assert canonical_json(vector["input"]) == vector["canonical"].encode("utf-8")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_canonical_bytes_parse_back_to_the_same_value(vector: dict) -> None:
    assert parse_json(vector["canonical"].encode("utf-8")) == vector["input"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"accuracy": 0.93}, "floats are not allowed"),
        ({"n": 2**53}, "outside"),
        ({1: "a"}, "not a string"),
        ({"s": "\ud800"}, "lone surrogate"),
        ({"b": b"bytes"}, "cannot be encoded"),
        ([float("nan")], "floats are not allowed"),
    ],
)
def test_values_without_one_canonical_form_are_refused(value: object, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        canonical_json(value)


@pytest.mark.parametrize(
    "raw",
    [b'{"a":1,"a":2}', b'{"a":NaN}', b"\xff\xfe", b"{", b'{"a":Infinity}'],
    ids=["duplicate key", "NaN", "not UTF-8", "truncated", "Infinity"],
)
def test_parse_refuses_ambiguous_or_broken_json(raw: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_json(raw)
