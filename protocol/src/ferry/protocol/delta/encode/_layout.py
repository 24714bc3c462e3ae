"""Where the tensors are: read from the artifact's own header, so deltas align by name.

safetensors is an 8-byte little-endian header length, a JSON header and the data;
ONNX is protobuf, whose initializers' ``raw_data`` we locate with a minimal
wire-format walk (the ``onnx`` package parses values but does not report file
offsets). GGUF, TFLite, PyTorch zip checkpoints and OpenVINO IR (whose offsets
are in the ``.xml`` beside the ``.bin``) are in ``_formats``. Files are read with
``os.pread`` in small pieces, never mapped, so a multi-GiB model costs no memory
here. Anything else, or any of these that does not parse cleanly, has no layout:
its bytes are then located in the old file by the matcher (``_match``).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from ferry.protocol.delta.encode._formats import gguf, openvino, tflite, torch_zip
from ferry.protocol.delta.encode._tensor import Tensor, checked_shape, row_bytes

__all__ = ["Tensor", "format_of", "read_layout", "row_bytes", "sidecar"]

# dtype name → (bytes per element, lane operations worth trying, is float)
_SAFETENSORS_DTYPES: dict[str, tuple[int, bool]] = {
    "F64": (8, True), "F32": (4, True), "F16": (2, True), "BF16": (2, True),
    "F8_E4M3": (1, True), "F8_E5M2": (1, True),
    "I64": (8, False), "I32": (4, False), "I16": (2, False), "I8": (1, False),
    "U64": (8, False), "U32": (4, False), "U16": (2, False), "U8": (1, False), "BOOL": (1, False),
}  # fmt: skip
# ONNX TensorProto.DataType → (bytes per element, is float)
_ONNX_DTYPES: dict[int, tuple[int, bool]] = {
    1: (4, True), 2: (1, False), 3: (1, False), 4: (2, False), 5: (2, False), 6: (4, False),
    7: (8, False), 9: (1, False), 10: (2, True), 11: (8, True), 12: (4, False), 13: (8, False),
    16: (2, True),
}  # fmt: skip
_MAX_SAFETENSORS_HEADER = 100 << 20
_MAX_MODEL_FIELDS = 64  # a ModelProto has a handful of top-level fields; random bytes do not


# Errors any parser may raise on bytes that are not its format (or are forged).
_REFUSED = (
    ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeDecodeError,
    struct.error, ElementTree.ParseError,
)  # fmt: skip
Parser = Callable[[int, int], list[Tensor]]


def read_layout(fd: int, size: int, sidecar: Path | None = None) -> list[Tensor] | None:
    """The tensors of a model file, sorted by offset; None when no parser accepts it.

    ``sidecar``: an OpenVINO ``.xml`` describing this ``.bin``. Tensors that overlap
    or run past the end refuse the whole layout (exact duplicates, shared constants,
    are kept once).
    """
    return _read(fd, size, sidecar)[1]


def sidecar(path: Path) -> Path | None:
    """The OpenVINO ``model.xml`` that describes ``model.bin``, when it sits beside it."""
    xml = path.with_suffix(".xml")
    return xml if path.suffix == ".bin" and xml.is_file() else None


def format_of(fd: int, size: int, sidecar: Path | None = None) -> str:
    """The name of the parser that read the file's layout, or ``"bytes"``."""
    return _read(fd, size, sidecar)[0]


def _read(fd: int, size: int, sidecar: Path | None) -> tuple[str, list[Tensor] | None]:
    parsers: list[tuple[str, Parser]] = [
        ("safetensors", _safetensors), ("onnx", _onnx), ("gguf", gguf), ("tflite", tflite),
        ("pytorch-zip", torch_zip),
    ]  # fmt: skip
    if sidecar is not None:
        parsers.insert(0, ("openvino", lambda _fd, bin_size: openvino(sidecar, bin_size)))
    for name, parser in parsers:
        try:
            tensors = parser(fd, size)
        except _REFUSED:
            continue
        if tensors:
            layout = _non_overlapping(_unique(tensors), size)
            if layout is not None:
                return name, layout
    return "bytes", None


def _unique(tensors: list[Tensor]) -> list[Tensor]:
    """Sorted by offset, exact duplicates of a range (one constant used twice) once."""
    seen: set[tuple[int, int]] = set()
    out = []
    for tensor in sorted(tensors, key=lambda t: (t.offset, t.length)):
        if (tensor.offset, tensor.length) not in seen:
            seen.add((tensor.offset, tensor.length))
            out.append(tensor)
    return out


def _non_overlapping(tensors: list[Tensor], size: int) -> list[Tensor] | None:
    end = 0
    for tensor in tensors:
        if tensor.offset < end or tensor.offset + tensor.length > size:
            return None
        end = tensor.offset + tensor.length
    return tensors


def _safetensors(fd: int, size: int) -> list[Tensor]:
    if size < 10:
        raise ValueError("too small")
    header_len = int.from_bytes(os.pread(fd, 8, 0), "little")
    if header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
        raise ValueError("not safetensors")
    header = json.loads(os.pread(fd, header_len, 8).decode("utf-8"))
    base = 8 + header_len
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        width, is_float = _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise ValueError("bad offsets")
        if end > begin:
            shape = checked_shape(info.get("shape"), width, end - begin)
            tensors.append(Tensor(name, width, is_float, base + begin, end - begin, shape))
    return tensors


# --- ONNX: the few protobuf fields we need --------------------------------------------

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
_MAX_DIMS_BYTES = 128  # a packed dims field of a real tensor is a few bytes


class _Wire:
    """Sequential protobuf wire reader over ``os.pread`` with a small read-ahead buffer."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.pos, self.end = fd, start, end
        self._buf, self._buf_at = b"", start

    def _byte(self) -> int:
        rel = self.pos - self._buf_at
        if rel >= len(self._buf):
            self._buf, self._buf_at, rel = os.pread(self.fd, 4096, self.pos), self.pos, 0
            if not self._buf:
                raise ValueError("truncated protobuf")
        self.pos += 1
        return self._buf[rel]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self._byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def fields(self, max_fields: int = 1 << 24) -> Iterator[tuple[int, int, Any]]:
        """Yield (field number, wire type, value or (start, length) for length-delimited)."""
        count = 0
        while self.pos < self.end:
            key = self.varint()
            number, wire = key >> 3, key & 7
            count += 1
            if number == 0 or count > max_fields:
                raise ValueError("not a protobuf message we expect")
            if wire == 0:
                yield number, wire, self.varint()
            elif wire == 2:
                length = self.varint()
                start = self.pos
                if start + length > self.end:
                    raise ValueError("field runs past its message")
                self.pos = start + length
                yield number, wire, (start, length)
            elif wire in (1, 5):
                self.pos += 8 if wire == 1 else 4
                yield number, wire, None
            else:
                raise ValueError("protobuf groups are not ONNX")
        if self.pos != self.end:
            raise ValueError("message overruns")


def _onnx(fd: int, size: int) -> list[Tensor]:
    tensors: list[Tensor] = []
    for number, wire, value in _Wire(fd, 0, size).fields(max_fields=_MAX_MODEL_FIELDS):
        if number == _MODEL_GRAPH and wire == 2:
            start, length = value
            for g_number, g_wire, g_value in _Wire(fd, start, start + length).fields():
                if g_number == _GRAPH_INITIALIZER and g_wire == 2:
                    tensor = _onnx_tensor(fd, *g_value)
                    if tensor is not None:
                        tensors.append(tensor)
    return tensors


def _onnx_tensor(fd: int, start: int, length: int) -> Tensor | None:
    name, dtype, raw, dims = "", 0, None, []
    for number, wire, value in _Wire(fd, start, start + length).fields():
        if number == _TENSOR_DIMS and wire == 0:
            dims.append(value)
        elif number == _TENSOR_DIMS and wire == 2 and value[1] <= _MAX_DIMS_BYTES:
            dims += _packed_varints(fd, *value)
        elif number == _TENSOR_NAME and wire == 2:
            name = os.pread(fd, value[1], value[0]).decode("utf-8")
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            dtype = value
        elif number == _TENSOR_RAW_DATA and wire == 2:
            raw = value
    if raw is None or raw[1] == 0 or dtype not in _ONNX_DTYPES:
        return None
    width, is_float = _ONNX_DTYPES[dtype]
    return Tensor(name, width, is_float, raw[0], raw[1], checked_shape(dims, width, raw[1]))


def _packed_varints(fd: int, start: int, length: int) -> list[int]:
    wire = _Wire(fd, start, start + length)
    values = []
    while wire.pos < wire.end:
        values.append(wire.varint())
    return values
