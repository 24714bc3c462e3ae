"""Delta building on the server: an on-demand, cached delta service around the encoder.

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
from ferry.server.deltas._service import (
    DEFAULT_MAX_FRACTION,
    DeltaOffer,
    DeltaService,
    PairRecord,
    build_pair,
)

__all__ = [
    "DEFAULT_MAX_FRACTION",
    "DeltaOffer",
    "DeltaResult",
    "DeltaService",
    "EncodeOptions",
    "PairRecord",
    "build_bsdiff40",
    "build_compressed",
    "build_delta",
    "build_pair",
]
