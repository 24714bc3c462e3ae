"""One delta operation per process, so the benchmark can time it and read its peak RSS.

    python bench/deltas_ops.py ferry-encode OLD NEW OUT [WORKERS]
    python bench/deltas_ops.py ferry-compress NEW OUT [WORKERS]
    python bench/deltas_ops.py ferry-apply OLD|- DELTA OUT SIZE SHA256
    python bench/deltas_ops.py ferry-apply-warm OLD DELTA OUT SIZE SHA256 RUNS
    python bench/deltas_ops.py bsdiff4-diff OLD NEW OUT
    python bench/deltas_ops.py bsdiff4-patch OLD PATCH OUT
    python bench/deltas_ops.py zipnn-xor-create OLD NEW OUT
    python bench/deltas_ops.py zipnn-xor-apply OLD DELTA OUT

"zipnn on the XOR" XORs the new file with the old one at the same offsets (the
part past the old file's end is kept as is) and compresses that with zipnn's
float32 byte grouping; apply decompresses and XORs back.
"""

from __future__ import annotations

import os
import struct
import sys


def ferry_encode(old: str, new: str, out: str, workers: str = "2") -> None:
    from ferry.server.deltas import EncodeOptions, build_delta

    build_delta(old, new, out, EncodeOptions(workers=int(workers)))


def ferry_compress(new: str, out: str, workers: str = "2") -> None:
    from ferry.server.deltas import EncodeOptions, build_compressed

    build_compressed(new, out, EncodeOptions(workers=int(workers)))


def ferry_apply(old: str, delta: str, out: str, size: str, sha256: str) -> None:
    """Also writes the call's own wall and CPU seconds (start-up and imports excluded:
    an agent is a long-running process) to $FERRY_BENCH_TIMING when it is set."""
    import json
    import time

    from ferry.protocol.delta import apply_delta_file
    from ferry.protocol.delta.codec import uses_numpy

    numpy = uses_numpy()  # imports numpy (when installed) before the clock starts
    wall, cpu = time.perf_counter(), time.process_time()
    apply_delta_file(None if old == "-" else old, delta, out, int(size), sha256)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if os.environ.get("FERRY_BENCH_TIMING"):
        with open(os.environ["FERRY_BENCH_TIMING"], "w") as handle:
            json.dump(
                {"wall": wall, "cpu": cpu, "numpy": numpy, "load": os.getloadavg()[0]}, handle
            )


def ferry_apply_warm(old: str, delta: str, out: str, size: str, sha256: str, runs: str) -> None:
    """``runs`` applies in one process; per run, the wall seconds, the process's CPU
    seconds and the main (decoding) thread's, to $FERRY_BENCH_TIMING. The first run
    pays the page cache and the decoder's first use, the others are warm."""
    import json
    import time

    from ferry.protocol.delta import apply_delta_file

    walls, cpus, mains = [], [], []
    for _ in range(int(runs)):
        wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
        apply_delta_file(old, delta, out, int(size), sha256)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        mains.append(time.thread_time() - main)
    with open(os.environ["FERRY_BENCH_TIMING"], "w") as handle:
        json.dump({"walls": walls, "cpus": cpus, "mains": mains}, handle)


def bsdiff4_diff(old: str, new: str, out: str) -> None:
    import bsdiff4

    bsdiff4.file_diff(old, new, out)


def bsdiff4_patch(old: str, patch: str, out: str) -> None:
    import bsdiff4

    bsdiff4.file_patch(old, out, patch)


def _xor_with(old: str, data: bytes) -> bytes:
    with open(old, "rb") as handle:
        base = handle.read(len(data))
    common = len(base)
    x = int.from_bytes(data[:common], "little") ^ int.from_bytes(base, "little")
    return x.to_bytes(common, "little") + data[common:]


def zipnn_xor_create(old: str, new: str, out: str) -> None:
    from zipnn import ZipNN

    with open(new, "rb") as handle:
        data = handle.read()
    packed = ZipNN(input_format="byte", bytearray_dtype="float32").compress(_xor_with(old, data))
    with open(out, "wb") as handle:
        handle.write(struct.pack("<Q", len(data)) + bytes(packed))


def zipnn_xor_apply(old: str, delta: str, out: str) -> None:
    from zipnn import ZipNN

    with open(delta, "rb") as handle:
        raw = handle.read()
    xored = bytes(ZipNN(input_format="byte", bytearray_dtype="float32").decompress(raw[8:]))
    with open(out, "wb") as handle:
        handle.write(_xor_with(old, xored))


OPS = {
    "ferry-encode": ferry_encode,
    "ferry-compress": ferry_compress,
    "ferry-apply": ferry_apply,
    "ferry-apply-warm": ferry_apply_warm,
    "bsdiff4-diff": bsdiff4_diff,
    "bsdiff4-patch": bsdiff4_patch,
    "zipnn-xor-create": zipnn_xor_create,
    "zipnn-xor-apply": zipnn_xor_apply,
}

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    OPS[sys.argv[1]](*sys.argv[2:])
