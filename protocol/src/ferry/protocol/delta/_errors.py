"""Why a delta was refused; every refusal tells the agent to fall back to the full download.

ProtocolError
└── DeltaError                     delta_error
    ├── DeltaCorruptError          delta_corrupt      (bad magic, header, record, payload)
    ├── DeltaTruncatedError        delta_truncated    (the stream ended early)
    ├── DeltaWrongBaseError        delta_wrong_base   (the old file is not the delta's base)
    ├── DeltaTooLargeError         delta_too_large    (a declared size exceeds a limit)
    ├── DeltaUnsupportedError      delta_unsupported  (unknown format version or codec)
    └── DeltaResultMismatchError   delta_result_mismatch (output ≠ manifest size/sha256)
"""

from __future__ import annotations

from ferry.protocol.errors import ProtocolError


class DeltaError(ProtocolError):
    """Base of every delta refusal; the agent falls back to the full artifact."""

    code = "delta_error"


class DeltaCorruptError(DeltaError):
    """The delta's bytes are not a valid delta, or a chunk's output has the wrong sha256."""

    code = "delta_corrupt"


class DeltaTruncatedError(DeltaError):
    """The delta stream ended before its last chunk."""

    code = "delta_truncated"


class DeltaWrongBaseError(DeltaError):
    """The old artifact on the device is not the one the delta was built against."""

    code = "delta_wrong_base"


class DeltaTooLargeError(DeltaError):
    """A declared size exceeds a configured limit or the manifest; refused before allocating."""

    code = "delta_too_large"


class DeltaUnsupportedError(DeltaError):
    """The delta uses a format version or codec this decoder does not know."""

    code = "delta_unsupported"


class DeltaResultMismatchError(DeltaError):
    """The delta does not produce the artifact the signed manifest describes."""

    code = "delta_result_mismatch"
