#!/usr/bin/env python3
"""Health probe: load the new ONNX model with onnxruntime and run one inference.

The agent runs it after switching to a new version, with ``FERRY_MODEL_DIR`` set
to the version's folder. Exit 0 commits the version; any other exit (or a hang
past the probe timeout) rolls back to the previous one, and what this script
printed goes into the ``rolled_back`` status report.

Inputs are zeros shaped like the model's declared inputs (dynamic dimensions
become 1); the outputs must be finite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
           "tensor(int32)": "int32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}  # fmt: skip


def find_model(model_dir: Path) -> Path:
    models = sorted(model_dir.rglob("*.onnx"))
    if not models:
        raise SystemExit(f"no .onnx file in {model_dir}")
    return models[0]


def main() -> int:
    import numpy as np
    import onnxruntime as ort

    model_dir = Path(os.environ["FERRY_MODEL_DIR"])
    path = find_model(model_dir)
    session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
    feeds = {}
    for item in session.get_inputs():
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in item.shape]
        feeds[item.name] = np.zeros(shape, dtype=_DTYPES.get(item.type, "float32"))
    outputs = session.run(None, feeds)
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            print(f"output {meta.name} has non-finite values", file=sys.stderr)
            return 1
    names = [meta.name for meta in session.get_outputs()]
    shapes = ", ".join(
        f"{name}{list(np.asarray(v).shape)}" for name, v in zip(names, outputs, strict=True)
    )
    version = os.environ.get("FERRY_MODEL_VERSION", "?")
    print(f"ok: {path.name} v{version} ran one inference -> {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
