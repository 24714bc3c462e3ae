"""Ferry's model-aware binary deltas: container format, descriptor and the device-side decoder.

Standard library plus ``zstandard`` and ``bsdiff4``, so it runs on the device; numpy,
when installed (``ferry-protocol[fast]``), speeds up the lane steps of the decoder
(same bytes, see :mod:`ferry.protocol.delta._lanes_np`). The encoder lives in :mod:`ferry.protocol.delta.encode`
(imported by the server and the `ferry delta` command, never by the device).
"""

from typing import TYPE_CHECKING

from ferry.protocol.delta._apply import apply_delta_file, decode_chunk
from ferry.protocol.delta._errors import (
    DeltaCorruptError,
    DeltaError,
    DeltaResultMismatchError,
    DeltaTooLargeError,
    DeltaTruncatedError,
    DeltaUnsupportedError,
    DeltaWrongBaseError,
)
from ferry.protocol.delta._format import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MAGIC,
    ChunkRecord,
    Codec,
    DeltaHeader,
    DeltaLimits,
    payload_cap,
)
from ferry.protocol.delta._inspect import DeltaIndex, read_index
from ferry.protocol.delta.codec import Op

if TYPE_CHECKING:
    from ferry.protocol.delta._descriptor import DeltaDescriptor


def __getattr__(name: str) -> object:
    """``DeltaDescriptor`` on first use: it imports the signed documents and cryptography
    (~13 MB and ~50 ms), which applying a delta never needs."""
    if name == "DeltaDescriptor":
        from ferry.protocol.delta._descriptor import DeltaDescriptor

        return DeltaDescriptor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "MAGIC",
    "ChunkRecord",
    "Codec",
    "DeltaCorruptError",
    "DeltaDescriptor",
    "DeltaError",
    "DeltaHeader",
    "DeltaIndex",
    "DeltaLimits",
    "DeltaResultMismatchError",
    "DeltaTooLargeError",
    "DeltaTruncatedError",
    "DeltaUnsupportedError",
    "DeltaWrongBaseError",
    "Op",
    "apply_delta_file",
    "decode_chunk",
    "payload_cap",
    "read_index",
]
