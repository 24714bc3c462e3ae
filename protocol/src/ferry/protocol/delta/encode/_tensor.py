"""One tensor's place in a file: what every layout parser returns and the planner reads."""

from __future__ import annotations

from dataclasses import dataclass

from ferry.protocol.delta import Op

FLOAT_OPS = (Op.XOR, Op.XORROT, Op.SUBZZ)
INT_OPS = (Op.SUB, Op.SUBZZ, Op.XOR)


@dataclass(frozen=True)
class Tensor:
    """One tensor's bytes in the file: name, element width, float or integer, range."""

    name: str
    width: int
    is_float: bool
    offset: int
    length: int
    row: int = 0  # bytes of one slice along dim 0 (row-major); 0 when the shape is unknown

    @property
    def ops(self) -> tuple[Op, ...]:
        """Lane operations worth trying against the aligned old tensor."""
        return FLOAT_OPS if self.is_float else INT_OPS

    @property
    def baseless_ops(self) -> tuple[Op, ...]:
        """Lane operations worth trying without a base (rotation helps 16/32-bit floats)."""
        return (Op.NONE, Op.ROT) if self.is_float and self.width in (2, 4) else (Op.NONE,)


def row_bytes(shape: object, width: int, length: int) -> int:
    """Bytes of one slice along dim 0, when ``shape`` is a list of ints matching ``length``.

    A scalar or an inconsistent shape gives 0 (unknown): no row alignment then.
    """
    if not isinstance(shape, list) or not shape:
        return 0
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return 0
    row = width
    for dim in shape[1:]:
        row *= dim
    return row if row and row * shape[0] == length else 0
