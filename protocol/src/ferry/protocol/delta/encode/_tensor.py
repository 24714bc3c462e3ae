"""One tensor's place in a file: what every layout parser returns and the planner reads."""

from __future__ import annotations

from dataclasses import dataclass

from ferry.protocol.delta import Op

FLOAT_OPS = (Op.XOR, Op.XORROT, Op.SUBZZ)
INT_OPS = (Op.SUB, Op.SUBZZ, Op.XOR)
MAX_RANK = 8  # more dimensions than any real tensor has: treated as unknown


@dataclass(frozen=True)
class Tensor:
    """One tensor's bytes in the file: name, element width, float or integer, range."""

    name: str
    width: int
    is_float: bool
    offset: int
    length: int
    shape: tuple[int, ...] = ()  # row-major dims, checked against length; () when unknown

    @property
    def row(self) -> int:
        """Bytes of one slice along dim 0; 0 when the shape is unknown."""
        return self.length // self.shape[0] if self.shape and self.shape[0] else 0

    @property
    def ops(self) -> tuple[Op, ...]:
        """Lane operations worth trying against the aligned old tensor."""
        return FLOAT_OPS if self.is_float else INT_OPS

    @property
    def baseless_ops(self) -> tuple[Op, ...]:
        """Lane operations worth trying without a base (rotation helps 16/32-bit floats)."""
        return (Op.NONE, Op.ROT) if self.is_float and self.width in (2, 4) else (Op.NONE,)


def checked_shape(shape: object, width: int, length: int) -> tuple[int, ...]:
    """``shape`` as a tuple when it is a list of ints whose product is ``length / width``.

    A scalar, a zero dimension or an inconsistent shape gives () (unknown): no
    alignment by shape then.
    """
    if not isinstance(shape, list) or not shape or len(shape) > MAX_RANK:
        return ()
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        return ()
    elements = 1
    for dim in shape:
        elements *= dim
    return tuple(shape) if elements * width == length else ()


def row_bytes(shape: object, width: int, length: int) -> int:
    """Bytes of one slice along dim 0, when ``shape`` is consistent with ``length``."""
    return Tensor("", width, False, 0, length, checked_shape(shape, width, length)).row
