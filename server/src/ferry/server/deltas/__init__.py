"""Delta building on the server: the encoder and an on-demand, cached delta service."""

from ferry.server.deltas._encoder import (
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
