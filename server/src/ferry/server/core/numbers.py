"""Numbers read from URLs and headers: ASCII digits only, bounded to what databases hold.

`str.isdigit` accepts superscripts and other Unicode digits that `int` then refuses
(``"¹".isdigit()`` is True), and Python integers outgrow SQLite's 64 bits; either
turned a request into a 500. Every integer read from text goes through here.
"""

from __future__ import annotations

# Row ids, version numbers, offsets: exact in a double (JSON clients) and in 64-bit columns.
MAX_ROW_ID = 2**53 - 1


def ascii_int(text: str, maximum: int = MAX_ROW_ID) -> int | None:
    """``text`` as a non-negative integer when it is ASCII digits up to ``maximum``, else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None
