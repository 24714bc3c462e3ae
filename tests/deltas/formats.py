"""Writers of small edge-format model files for delta tests: PyTorch zip, GGUF, TFLite, OpenVINO.

Built from what PyPI packages ship (``gguf``, ``flatbuffers``) or by hand from the
formats' specifications; never downloaded. Each takes name → float32 values (or
int8 bytes) so a test can write an old and a fine-tuned new version.
"""

from __future__ import annotations

import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np

Weights = dict[str, np.ndarray]


def fine_tuned(weights: Weights, seed: int, amount: float = 1e-3) -> Weights:
    """Every float weight moves a little; int8 tensors move by ±1 in 2 % of places."""
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for name, value in weights.items():
        if value.dtype == np.int8:
            step = rng.choice(
                np.array([-1, 0, 1], dtype=np.int8), value.shape, p=[0.01, 0.98, 0.01]
            )
            out[name] = (value + step).astype(np.int8)
        else:
            out[name] = (value * (1 + rng.normal(0, amount, value.shape))).astype(value.dtype)
    return out


def weights(seed: int = 1, rows: int = 512) -> Weights:
    rng = np.random.default_rng(seed)
    return {
        "embed.weight": rng.normal(0, 0.05, (rows, 64)).astype(np.float32),
        "dense.weight": rng.normal(0, 0.05, (64, 64)).astype(np.float32),
        "dense.bias": rng.normal(0, 0.05, (64,)).astype(np.float32),
        "q.weight": rng.integers(-128, 128, (256, 64), dtype=np.int8),
    }


# --- PyTorch zip ------------------------------------------------------------------------------


def _fake_torch() -> types.ModuleType:
    """A stand-in ``torch`` module whose storage classes pickle as torch's do (by name)."""
    module = types.ModuleType("torch")
    for name in ("FloatStorage", "CharStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(module, name, cls)
    return module


class _StoragePickler(pickle.Pickler):
    def __init__(self, file: object, storages: dict[int, tuple[type, str, int]]) -> None:
        super().__init__(file, protocol=2)  # type: ignore[arg-type]
        self.storages = storages

    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "tensor":
            storage_type, key, numel = self.storages[obj[1]]
            return ("storage", storage_type, key, "cpu", numel)
        return None


def write_torch_zip(path: Path, tensors: Weights, extra_meta: str = "") -> Path:
    """A PyTorch-style checkpoint: ``archive/data.pkl`` (persistent ids naming typed
    storages), ``archive/data/<key>`` stored uncompressed, ``archive/version``."""
    fake = _fake_torch()
    saved = sys.modules.get("torch")
    sys.modules["torch"] = fake
    try:
        storages = {}
        for index, value in enumerate(tensors.values()):
            cls = fake.CharStorage if value.dtype == np.int8 else fake.FloatStorage
            storages[index] = (cls, str(index), value.size)
        import io

        buffer = io.BytesIO()
        state = {name: ("tensor", i) for i, name in enumerate(tensors)}
        state["_meta"] = extra_meta  # type: ignore[assignment]
        _StoragePickler(buffer, storages).dump(state)
    finally:
        if saved is None:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = saved
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for index, value in enumerate(tensors.values()):
            archive.writestr(f"archive/data/{index}", value.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


# --- GGUF --------------------------------------------------------------------------------------


def write_gguf(path: Path, tensors: Weights) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("ferry-test")
    writer.add_token_list([f"tok{i}" for i in range(50)])
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- TFLite ------------------------------------------------------------------------------------

_TFL_TYPE = {np.dtype(np.float32): 0, np.dtype(np.int8): 9}


def write_tflite(path: Path, tensors: Weights) -> Path:
    """A TFLite Model FlatBuffer: buffers (buffer 0 empty, as the converter writes) and one
    subgraph whose tensors name, type and shape them. Operators are not needed here."""
    builder = flatbuffers.Builder(1 << 16)
    datas = []
    for value in tensors.values():
        builder.StartVector(1, value.nbytes, 16)  # buffers are 16-byte aligned
        builder.head = builder.head - value.nbytes
        builder.Bytes[builder.head : builder.head + value.nbytes] = value.tobytes()
        datas.append(builder.EndVector())
    buffers = [_table(builder, [])]
    buffers += [_table(builder, [(0, data)]) for data in datas]
    tensor_tables = []
    for index, (name, value) in enumerate(tensors.items()):
        name_at = builder.CreateString(name)
        builder.StartVector(4, value.ndim, 4)
        for dim in reversed(value.shape):
            builder.PrependInt32(dim)
        shape = builder.EndVector()
        builder.StartObject(4)
        builder.PrependUOffsetTRelativeSlot(0, shape, 0)
        builder.PrependInt8Slot(1, _TFL_TYPE[value.dtype], 0)
        builder.PrependUint32Slot(2, index + 1, 0)
        builder.PrependUOffsetTRelativeSlot(3, name_at, 0)
        tensor_tables.append(builder.EndObject())
    subgraph = _table(builder, [(0, _offsets(builder, tensor_tables))])
    subgraphs = _offsets(builder, [subgraph])
    buffer_vector = _offsets(builder, buffers)
    builder.StartObject(5)
    builder.PrependUint32Slot(0, 3, 0)
    builder.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    builder.PrependUOffsetTRelativeSlot(4, buffer_vector, 0)
    builder.Finish(builder.EndObject(), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def _table(builder: flatbuffers.Builder, fields: list[tuple[int, int]]) -> int:
    builder.StartObject(3)
    for slot, offset in fields:
        builder.PrependUOffsetTRelativeSlot(slot, offset, 0)
    return int(builder.EndObject())


def _offsets(builder: flatbuffers.Builder, items: list[int]) -> int:
    builder.StartVector(4, len(items), 4)
    for item in reversed(items):
        builder.PrependUOffsetTRelative(item)
    return int(builder.EndVector())


# --- OpenVINO IR -------------------------------------------------------------------------------

_OV_TYPE = {np.dtype(np.float32): "f32", np.dtype(np.int8): "i8"}


def write_openvino(stem: Path, tensors: Weights, order: list[str] | None = None) -> Path:
    """``stem.xml`` (a net whose Const layers give element type, shape, offset and size)
    and ``stem.bin``; ``order`` lays the constants out in another order in the .bin."""
    names = order or list(tensors)
    offsets, blob = {}, b""
    for name in names:
        offsets[name] = len(blob)
        blob += tensors[name].tobytes()
    layers = []
    for index, (name, value) in enumerate(tensors.items()):
        shape = ",".join(str(d) for d in value.shape)
        layers.append(
            f'<layer id="{index}" name="{name}" type="Const" version="opset1">'
            f'<data element_type="{_OV_TYPE[value.dtype]}" shape="{shape}" '
            f'offset="{offsets[name]}" size="{value.nbytes}"/></layer>'
        )
    xml = (
        f'<?xml version="1.0"?><net name="m" version="11"><layers>{"".join(layers)}</layers></net>'
    )
    stem.with_suffix(".xml").write_text(xml)
    stem.with_suffix(".bin").write_bytes(blob)
    return stem.with_suffix(".bin")


def pack(fmt: str, *values: int) -> bytes:
    return struct.pack(fmt, *values)
