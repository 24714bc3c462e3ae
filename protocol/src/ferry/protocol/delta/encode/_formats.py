"""Tensor layouts of the edge formats: PyTorch zip checkpoints, GGUF, TFLite, OpenVINO IR.

Each parser reads only what it needs with ``os.pread`` (never the whole file),
checks every declared count and offset against the file size and a fixed cap
*before* reading or allocating for it, and raises ``ValueError`` on anything it
does not expect. The caller (``read_layout``) then falls back to the byte-level
path. Tensors are named so that the same weight has the same name in two versions.
"""

from __future__ import annotations

import os
import pickletools
import re
import struct
from pathlib import Path
from xml.etree import ElementTree

from ferry.protocol.delta.encode._tensor import Tensor, checked_shape

MAX_ENTRIES = 1 << 20  # tensors, zip entries, key/value pairs: far above any real model
MAX_META = 64 << 20  # a pickle, a zip central directory, an OpenVINO xml
MAX_NAME = 64 << 10  # a key or tensor name read into memory


class _Reader:
    """Sequential little-endian reads over ``os.pread``, refusing to run past ``end``."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.pos, self.end = fd, start, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ValueError(f"truncated: {n} bytes at {self.pos} run past {self.end}")
        data = os.pread(self.fd, n, self.pos)
        if len(data) != n:
            raise ValueError("the file is shorter than its size")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise ValueError(f"truncated: {n} bytes at {self.pos} run past {self.end}")
        self.pos += n

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def u32(self) -> int:
        return self.unpack("I")[0]

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def count(self, at_least_bytes_each: int, cap: int | None = None) -> int:
        """A u64 element count that the rest of the file could actually hold (and, for
        things that are read into memory or looped over, at most ``cap``)."""
        n = self.u64()
        if n * max(at_least_bytes_each, 1) > self.end - self.pos or (cap is not None and n > cap):
            raise ValueError(f"declared count {n} exceeds what the file can hold")
        return n


# --- PyTorch zip checkpoints ----------------------------------------------------------------

_EOCD, _EOCD64_LOCATOR, _EOCD64 = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL, _LOCAL = b"PK\x01\x02", b"PK\x03\x04"
_STORAGE = re.compile(r"^[^/]+/data/(\d+)$")
_PICKLE = re.compile(r"^[^/]+/data\.pkl$")
_STORAGE_TYPES: dict[str, tuple[int, bool]] = {
    "FloatStorage": (4, True), "DoubleStorage": (8, True), "HalfStorage": (2, True),
    "BFloat16Storage": (2, True), "LongStorage": (8, False), "IntStorage": (4, False),
    "ShortStorage": (2, False), "CharStorage": (1, False), "ByteStorage": (1, False),
    "BoolStorage": (1, False), "QInt8Storage": (1, False), "QUInt8Storage": (1, False),
    "QInt32Storage": (4, False), "UntypedStorage": (1, False),
}  # fmt: skip
_DEFAULT_STORAGE = (4, True)  # dtype not found in the pickle: most storages are float32


def torch_zip(fd: int, size: int) -> list[Tensor]:
    """``<archive>/data/<key>`` entries stored uncompressed, typed from the pickle if possible."""
    entries = _zip_entries(fd, size)
    types: dict[str, tuple[int, bool]] = {}
    pickles = [e for e in entries if _PICKLE.match(e[0])]
    if pickles:
        name, method, data_offset, data_len = pickles[0]
        if method == 0 and data_len <= MAX_META:
            types = _storage_types(os.pread(fd, data_len, data_offset))
    tensors = []
    for name, method, data_offset, data_len in entries:
        match = _STORAGE.match(name)
        if match and method == 0 and data_len:
            width, is_float = types.get(match.group(1), _DEFAULT_STORAGE)
            tensors.append(Tensor(f"data/{match.group(1)}", width, is_float, data_offset, data_len))
    if not tensors:
        raise ValueError("no stored tensor entries: not a PyTorch checkpoint")
    return tensors


def _zip_entries(fd: int, size: int) -> list[tuple[str, int, int, int]]:
    """(name, method, data offset, data length) of every entry, from the central directory."""
    cd_offset, cd_size, count = _end_of_central_directory(fd, size)
    if count > MAX_ENTRIES or cd_size > MAX_META or cd_offset + cd_size > size:
        raise ValueError("central directory out of bounds")
    reader = _Reader(fd, cd_offset, cd_offset + cd_size)
    entries = []
    for _ in range(count):
        head = reader.take(46)
        if head[:4] != _CENTRAL:
            raise ValueError("bad central directory entry")
        (method,) = struct.unpack("<H", head[10:12])
        csize, usize = struct.unpack("<II", head[20:28])
        name_len, extra_len, comment_len = struct.unpack("<HHH", head[28:34])
        local = struct.unpack("<I", head[42:46])[0]
        name = reader.take(name_len).decode("utf-8")
        extra = reader.take(extra_len)
        reader.skip(comment_len)
        usize, csize, local = _zip64(extra, usize, csize, local)
        entries.append((name, method, _data_offset(fd, size, local, csize), csize))
    return entries


def _end_of_central_directory(fd: int, size: int) -> tuple[int, int, int]:
    tail_at = max(0, size - (1 << 16) - 22)
    tail = os.pread(fd, size - tail_at, tail_at)
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        raise ValueError("no end of central directory: not a zip archive")
    count, cd_size, cd_offset = struct.unpack("<10xHII", tail[at : at + 20])
    locator = tail[at - 20 : at] if at >= 20 else b""
    if locator[:4] == _EOCD64_LOCATOR:
        (eocd64,) = struct.unpack("<8xQ", locator[:16])
        record = _Reader(fd, eocd64, size).take(56)
        if record[:4] != _EOCD64:
            raise ValueError("bad zip64 end of central directory")
        count, cd_size, cd_offset = struct.unpack("<32xQQQ", record)
    return cd_offset, cd_size, count


def _zip64(extra: bytes, usize: int, csize: int, local: int) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extra field where the 32-bit ones are saturated."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[at : at + 4])
        body = extra[at + 4 : at + 4 + length]
        if tag == 1:
            values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == 0xFFFFFFFF:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF:
                csize = values.pop(0)
            if local == 0xFFFFFFFF:
                local = values.pop(0)
        at += 4 + length
    return usize, csize, local


def _data_offset(fd: int, size: int, local: int, csize: int) -> int:
    head = _Reader(fd, local, size).take(30)
    if head[:4] != _LOCAL:
        raise ValueError("bad local file header")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start: int = local + 30 + name_len + extra_len
    if start + csize > size:
        raise ValueError("entry data runs past the end of the file")
    return start


def _storage_types(pickle: bytes) -> dict[str, tuple[int, bool]]:
    """Storage key → (width, is float), read from the pickle's opcodes (never executed).

    A storage is pickled as a persistent id ``('storage', torch.<X>Storage, key, …)``:
    the storage class (a GLOBAL, or a memo GET of one) is followed by the key string.
    Anything unexpected just leaves keys untyped.
    """
    types: dict[str, tuple[int, bool]] = {}
    memo: dict[int, str] = {}
    last, pending = "", None
    try:
        for opcode, arg, _ in pickletools.genops(pickle):
            name = opcode.name
            if name == "GLOBAL" and isinstance(arg, str):
                last = arg.split(" ")[-1]
                pending = _STORAGE_TYPES.get(last)
            elif name in ("BINPUT", "LONG_BINPUT") and isinstance(arg, int):
                memo[arg] = last
            elif name in ("BINGET", "LONG_BINGET") and isinstance(arg, int):
                last = memo.get(arg, "")
                pending = _STORAGE_TYPES.get(last)
            elif "UNICODE" in name and isinstance(arg, str) and pending is not None:
                types[arg], pending = pending, None
            else:
                last, pending = "", None
    except (ValueError, KeyError, struct.error):
        return types
    return types


# --- GGUF ----------------------------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_ALIGNMENT_KEY = "general.alignment"
_GGUF_MAX_DIMS = 4
# ggml type → (elements per block, bytes per block, element width for lanes, is float)
_GGML_TYPES: dict[int, tuple[int, int, int, bool]] = {
    0: (1, 4, 4, True), 1: (1, 2, 2, True), 30: (1, 2, 2, True), 28: (1, 8, 8, True),
    24: (1, 1, 1, False), 25: (1, 2, 2, False), 26: (1, 4, 4, False), 27: (1, 8, 8, False),
    2: (32, 18, 1, False), 3: (32, 20, 1, False), 6: (32, 22, 1, False), 7: (32, 24, 1, False),
    8: (32, 34, 1, False), 9: (32, 40, 1, False), 10: (256, 84, 1, False),
    11: (256, 110, 1, False), 12: (256, 144, 1, False), 13: (256, 176, 1, False),
    14: (256, 210, 1, False), 15: (256, 292, 1, False), 16: (256, 66, 1, False),
    17: (256, 74, 1, False), 18: (256, 98, 1, False), 19: (256, 50, 1, False),
    20: (32, 18, 1, False), 21: (256, 110, 1, False), 22: (256, 82, 1, False),
    23: (256, 136, 1, False), 29: (256, 56, 1, False), 34: (256, 54, 1, False),
    35: (256, 66, 1, False), 39: (32, 17, 1, False),
}  # fmt: skip


def gguf(fd: int, size: int) -> list[Tensor]:
    """GGUF v2/v3 (little-endian): key/values, tensor infos, then aligned tensor data."""
    reader = _Reader(fd, 0, size)
    if reader.take(4) != _GGUF_MAGIC:
        raise ValueError("not GGUF")
    if reader.u32() not in (2, 3):
        raise ValueError("unsupported GGUF version")
    tensor_count, kv_count = reader.count(24, MAX_ENTRIES), reader.count(12, MAX_ENTRIES)
    alignment = 32
    for _ in range(kv_count):
        key = _gguf_string(reader)
        value_type = reader.u32()
        if key == _GGUF_ALIGNMENT_KEY and value_type == 4:
            alignment = reader.u32()
            if alignment == 0 or alignment & (alignment - 1) or alignment > 1 << 20:
                raise ValueError("bad alignment")
        else:
            _gguf_skip_value(reader, value_type)
    infos = [_gguf_tensor_info(reader) for _ in range(tensor_count)]
    data_start = reader.pos + -reader.pos % alignment
    tensors = []
    for name, dims, ggml_type, offset in infos:
        tensor = _gguf_tensor(name, dims, ggml_type, data_start + offset)
        if tensor is not None:
            tensors.append(tensor)
    return tensors


def _gguf_string(reader: _Reader) -> str:
    return reader.take(reader.count(1, MAX_NAME)).decode("utf-8")


def _gguf_skip_value(reader: _Reader, value_type: int, depth: int = 0) -> None:
    if value_type in _GGUF_SCALARS:
        reader.skip(_GGUF_SCALARS[value_type])
    elif value_type == _GGUF_STRING:
        reader.skip(reader.count(1))
    elif value_type == _GGUF_ARRAY and depth == 0:
        element_type = reader.u32()
        if element_type in _GGUF_SCALARS:
            each = _GGUF_SCALARS[element_type]
            reader.skip(reader.count(each) * each)
        else:
            for _ in range(reader.count(8, MAX_ENTRIES)):
                _gguf_skip_value(reader, element_type, depth + 1)
    else:
        raise ValueError(f"unknown GGUF value type {value_type}")


def _gguf_tensor_info(reader: _Reader) -> tuple[str, list[int], int, int]:
    name = _gguf_string(reader)
    n_dims = reader.u32()
    if not 1 <= n_dims <= _GGUF_MAX_DIMS:
        raise ValueError("bad tensor rank")
    dims = list(reader.unpack(f"{n_dims}Q"))
    ggml_type, offset = reader.u32(), reader.u64()
    return name, dims, ggml_type, offset


def _gguf_tensor(name: str, dims: list[int], ggml_type: int, offset: int) -> Tensor | None:
    """A tensor of a known ggml type; unknown types stay raw bytes (located by the matcher)."""
    if ggml_type not in _GGML_TYPES:
        return None
    block, block_bytes, width, is_float = _GGML_TYPES[ggml_type]
    elements = 1
    for dim in dims:
        elements *= dim
    if elements % block or elements > 1 << 48:
        raise ValueError("tensor size is not a whole number of blocks")
    length = elements // block * block_bytes
    # ggml's dims run innermost first; a quantised row is whole blocks of bytes (width 1)
    inner = dims[0] // block * block_bytes // width if dims and dims[0] % block == 0 else 0
    shape = [*reversed(dims[1:]), inner]
    return (
        Tensor(name, width, is_float, offset, length, checked_shape(shape, width, length))
        if length
        else None
    )


# --- TFLite (FlatBuffers) ------------------------------------------------------------------

_TFL_IDENT = b"TFL3"
_MODEL_SUBGRAPHS, _MODEL_BUFFERS = 2, 4
_SUBGRAPH_TENSORS = 0
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME = 0, 1, 2, 3
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
# TensorType → (element width, is float)
_TFL_TYPES: dict[int, tuple[int, bool]] = {
    0: (4, True), 1: (2, True), 2: (4, False), 3: (1, False), 4: (8, False), 6: (1, False),
    7: (2, False), 8: (4, True), 9: (1, False), 10: (8, True), 11: (8, True), 12: (8, False),
    15: (4, False), 16: (2, False), 17: (1, False), 18: (2, True),
}  # fmt: skip


class _FlatBuffer:
    """Bounds-checked reads of FlatBuffers tables, vectors and scalars over ``os.pread``."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def read(self, at: int, n: int) -> bytes:
        if at < 0 or at + n > self.size:
            raise ValueError("FlatBuffer offset out of bounds")
        return os.pread(self.fd, n, at)

    def u32(self, at: int) -> int:
        return int.from_bytes(self.read(at, 4), "little")

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of a table's field, or None when it is absent."""
        vtable = table - int.from_bytes(self.read(table, 4), "little", signed=True)
        vtable_len = int.from_bytes(self.read(vtable, 2), "little")
        if vtable_len < 4 or 4 + 2 * index + 2 > vtable_len:
            return None
        rel = int.from_bytes(self.read(vtable + 4 + 2 * index, 2), "little")
        return table + rel if rel else None

    def ref(self, at: int) -> int:
        return at + self.u32(at)

    def vector(self, table: int, index: int, each: int) -> tuple[int, int]:
        """(position of the first element, length); (0, 0) when absent."""
        at = self.field(table, index)
        if at is None:
            return 0, 0
        vector = self.ref(at)
        length = self.u32(vector)
        if length > MAX_ENTRIES and each > 1 or vector + 4 + length * each > self.size:
            raise ValueError("FlatBuffer vector runs past the end")
        return vector + 4, length

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        at = self.field(table, index)
        if at is None:
            return default
        value: int = struct.unpack("<" + fmt, self.read(at, struct.calcsize(fmt)))[0]
        return value


def tflite(fd: int, size: int) -> list[Tensor]:
    """Buffers of a TFLite model, named and typed by the first tensor that uses each."""
    fb = _FlatBuffer(fd, size)
    if size < 8 or fb.read(4, 4) != _TFL_IDENT:
        raise ValueError("not TFLite")
    model = fb.ref(0)
    names = _tflite_tensors(fb, model)
    start, count = fb.vector(model, _MODEL_BUFFERS, 4)
    tensors = []
    for index in range(count):
        buffer = fb.ref(start + 4 * index)
        where = _tflite_buffer(fb, buffer)
        if where is None:
            continue
        name, width, is_float, shape = names.get(index, (f"buffer{index}", 1, False, []))
        offset, length = where
        tensors.append(
            Tensor(name, width, is_float, offset, length, checked_shape(shape, width, length))
        )
    return tensors


def _tflite_buffer(fb: _FlatBuffer, buffer: int) -> tuple[int, int] | None:
    data, length = fb.vector(buffer, _BUFFER_DATA, 1)
    if length:
        return data, length
    offset, size = fb.scalar(buffer, _BUFFER_OFFSET, "Q"), fb.scalar(buffer, _BUFFER_SIZE, "Q")
    if offset > 1 and size:  # large models keep buffers after the FlatBuffer
        if offset + size > fb.size:
            raise ValueError("buffer runs past the end")
        return offset, size
    return None


def _tflite_tensors(fb: _FlatBuffer, model: int) -> dict[int, tuple[str, int, bool, list[int]]]:
    """Buffer index → (tensor name, width, is float, shape) of the first tensor using it."""
    out: dict[int, tuple[str, int, bool, list[int]]] = {}
    subgraphs, n_subgraphs = fb.vector(model, _MODEL_SUBGRAPHS, 4)
    for s in range(n_subgraphs):
        subgraph = fb.ref(subgraphs + 4 * s)
        tensors, n_tensors = fb.vector(subgraph, _SUBGRAPH_TENSORS, 4)
        for t in range(n_tensors):
            tensor = fb.ref(tensors + 4 * t)
            buffer = fb.scalar(tensor, _TENSOR_BUFFER, "I")
            if buffer == 0 or buffer in out:
                continue
            width, is_float = _TFL_TYPES.get(fb.scalar(tensor, _TENSOR_TYPE, "b"), (1, False))
            name_at = fb.field(tensor, _TENSOR_NAME)
            name = f"buffer{buffer}"
            if name_at is not None:
                string = fb.ref(name_at)
                name = fb.read(string + 4, min(fb.u32(string), 4096)).decode("utf-8")
            dims, n_dims = fb.vector(tensor, _TENSOR_SHAPE, 4)
            shape = (
                list(struct.unpack(f"<{n_dims}i", fb.read(dims, 4 * n_dims))) if n_dims <= 8 else []
            )
            out[buffer] = (name, width, is_float, shape)
    return out


# --- OpenVINO IR (.xml + .bin) ---------------------------------------------------------------

_OV_TYPES: dict[str, tuple[int, bool]] = {
    "f32": (4, True), "f16": (2, True), "bf16": (2, True), "f64": (8, True),
    "i8": (1, False), "u8": (1, False), "i16": (2, False), "u16": (2, False),
    "i32": (4, False), "u32": (4, False), "i64": (8, False), "u64": (8, False),
    "boolean": (1, False), "u1": (1, False), "i4": (1, False), "u4": (1, False),
    "f8e4m3": (1, True), "f8e5m2": (1, True),
}  # fmt: skip


def openvino(xml_path: Path, bin_size: int) -> list[Tensor]:
    """``Const`` layers of an OpenVINO IR: their ``offset``/``size`` into the ``.bin``."""
    if xml_path.stat().st_size > MAX_META:
        raise ValueError("OpenVINO xml too large")
    text = xml_path.read_bytes()
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise ValueError("DTDs and entities are not OpenVINO IR")
    root = ElementTree.fromstring(text)
    if root.tag != "net":
        raise ValueError("not OpenVINO IR")
    tensors = []
    for layer in root.iter("layer"):
        if layer.get("type") != "Const":
            continue
        data = layer.find("data")
        if data is None:
            raise ValueError("Const layer without data")
        tensor = _ov_tensor(layer.get("name") or layer.get("id") or "", data.attrib, bin_size)
        if tensor is not None:
            tensors.append(tensor)
        if len(tensors) > MAX_ENTRIES:
            raise ValueError("too many constants")
    return tensors


def _ov_tensor(name: str, attrs: dict[str, str], bin_size: int) -> Tensor | None:
    offset, length = int(attrs["offset"]), int(attrs["size"])
    if offset < 0 or length < 0 or offset + length > bin_size:
        raise ValueError("constant outside the .bin")
    width, is_float = _OV_TYPES.get(attrs.get("element_type", ""), (1, False))
    shape_text = attrs.get("shape", "")
    shape = [int(d) for d in shape_text.split(",")] if shape_text else []
    return (
        Tensor(name, width, is_float, offset, length, checked_shape(shape, width, length))
        if length
        else None
    )
