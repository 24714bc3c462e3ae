"""The delta descriptor: the signed statement that a delta leads from one file to another.

Defined with the other signed documents in `ferry.protocol.documents` (so verifying
one never imports the decoder); re-exported here for the delta package.
"""

from ferry.protocol.documents import DELTA_FORMATS as FORMATS
from ferry.protocol.documents import DeltaDescriptor

__all__ = ["FORMATS", "DeltaDescriptor"]
