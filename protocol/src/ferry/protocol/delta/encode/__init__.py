"""The delta encoder: cut a new artifact along its tensors and code each chunk the smallest way.

Pure computation over two files (standard library, ``zstandard``, ``bsdiff4``): the
server's delta service and the ``ferry delta`` command both use it, and a device
never imports it (the decoder is :mod:`ferry.protocol.delta`).
"""

from ferry.protocol.delta.encode._encoder import (
    DeltaResult,
    EncodeOptions,
    build_bsdiff40,
    build_compressed,
    build_delta,
)
from ferry.protocol.delta.encode._layout import Tensor, format_of, read_layout, sidecar

__all__ = [
    "DeltaResult",
    "EncodeOptions",
    "Tensor",
    "build_bsdiff40",
    "build_compressed",
    "build_delta",
    "format_of",
    "read_layout",
    "sidecar",
]
