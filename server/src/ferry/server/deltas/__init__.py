"""Delta building on the server: an on-demand, cached delta builder around the encoder.

The encoder itself is :mod:`ferry.protocol.delta.encode` (no server dependencies, so
the `ferry delta` command runs it without a server); it is re-exported here.
"""

from ferry.protocol.delta.encode import (
    DeltaResult,
    EncodeOptions,
    build_bsdiff40,
    build_compressed,
    build_delta,
)
from ferry.server.deltas._builder import (
    DEFAULT_MAX_FRACTION,
    DeltaBuilder,
    DeltaOffer,
    PairRecord,
    build_pair,
)

__all__ = [
    "DEFAULT_MAX_FRACTION",
    "DeltaBuilder",
    "DeltaOffer",
    "DeltaResult",
    "EncodeOptions",
    "PairRecord",
    "build_bsdiff40",
    "build_compressed",
    "build_delta",
    "build_pair",
]
