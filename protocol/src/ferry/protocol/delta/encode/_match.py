"""Find where bytes of the new file sit in the old one, for files with no tensor layout.

An unknown container (an archive, a format Ferry does not parse) often holds the
same payloads as its old version, shifted by a header that grew, reordered, or
with a few bytes changed. Pairing its chunks with the *same* old offsets then finds
nothing; whole-file bsdiff finds them anywhere. This module finds them cheaply:

- **Anchors.** Positions in the old file where one of a few 2-byte patterns occurs
  (found with ``bytes.find``, C speed), at most one per ``_SPACING`` bytes per
  pattern; each is keyed by the 24 bytes it starts. Memory is bounded by
  ``old_size / _SPACING`` entries per pattern: at most 256 Ki anchors (~30 MB) per
  GiB, ~52 Ki (~6 MB) on random-like bytes.
- **Votes.** Every pattern occurrence in a new chunk whose 24 bytes are an anchor
  votes for a shift (old offset − new offset).
- **Check.** The most voted shifts, the previous chunk's shift and zero are scored
  by how many sampled 8-byte windows match; the best wins, ties keep the previous
  shift. A chunk whose every value drifted (no window matches) keeps the previous
  shift, so aligned XOR still sees the same bytes it did before.
"""

from __future__ import annotations

import os
from collections import Counter

_PATTERNS = (b"\x5a\xa5", b"\xa5\x5a", b"\x3c\x96", b"\x69\xc3")
_KEY = 24
_SPACING = 16 << 10
_READ = 4 << 20
_SAMPLES = 64
_FINE = 64  # a placement's ends are refined to this many bytes
_GAP = 4  # sampled windows missing in a row that end a placement
_MIN_DISTINCT = 6  # keys of padding or constant runs would match everywhere
_MAX_HITS = 4096  # pattern occurrences examined per window and pattern (a run of them is junk)


class Matcher:
    """Locates new-file ranges in the old file; built lazily on the first request."""

    def __init__(self, old_fd: int, old_size: int, new_fd: int) -> None:
        self.old_fd, self.old_size, self.new_fd = old_fd, old_size, new_fd
        self.shift = 0
        self._anchors: dict[bytes, int] | None = None

    def locate(self, offset: int, length: int) -> tuple[int, int]:
        """(shift, usable): shift = old offset − new offset for the range's first bytes,
        and ``usable`` how many leading bytes to code with it. The caller cuts the chunk
        there, so a chunk never straddles two placements. Updates the running shift."""
        data = os.pread(self.new_fd, length, offset)
        candidates = {self.shift, 0, *self._votes(data, offset)}
        runs = {
            shift: self._run(data, offset + shift)
            for shift in candidates
            if 0 <= offset + shift <= self.old_size
        }
        starting = [shift for shift, (score, _, first) in runs.items() if score and first < _FINE]
        if starting:
            best = max(starting, key=lambda shift: (runs[shift][0], shift == self.shift))
            self.shift = best
            return best, runs[best][1]
        later = min((first for _, _, first in runs.values()), default=length)
        return self.shift, later  # other bytes first; a placement starts at ``later``

    def _votes(self, data: bytes, offset: int) -> list[int]:
        anchors = self._index()
        votes: Counter[int] = Counter()
        for pattern in _PATTERNS:
            at, hits = data.find(pattern), 0
            while 0 <= at <= len(data) - _KEY and hits < _MAX_HITS:
                hits += 1
                old = anchors.get(data[at : at + _KEY])
                if old is not None:
                    votes[old - (offset + at)] += 1
                at = data.find(pattern, at + 1)
        return [shift for shift, _ in votes.most_common(2)]

    def _run(self, data: bytes, old_offset: int) -> tuple[int, int, int]:
        """Sample 8-byte windows every ``len/_SAMPLES`` bytes against the old bytes:
        (matches in the leading run, where that run ends, first matching sample).

        The leading run tolerates isolated misses (a few changed bytes) and ends at
        ``_GAP`` misses in a row.
        """
        old = os.pread(self.old_fd, len(data), old_offset)
        step = max(len(data) // _SAMPLES, 8)
        score, last, first, misses = 0, -1, len(data), 0
        for at in range(0, min(len(data), len(old)) - 7, step):
            if data[at : at + 8] == old[at : at + 8]:
                first = min(first, at)
                if misses < _GAP:
                    score, last, misses = score + 1, at, 0
            else:
                misses += 1
        if first < len(data):
            first = _refine(data, old, first, -_FINE, -1)
        if score == 0:
            return 0, 0, first
        end = _refine(data, old, last, _FINE, min(len(data), len(old))) + 8
        while end < min(len(data), len(old)) and data[end] == old[end]:  # to the byte
            end += 1
        return score, (len(data) if end + step >= len(data) else end), first

    def _index(self) -> dict[bytes, int]:
        if self._anchors is None:
            self._anchors = _anchors(self.old_fd, self.old_size)
        return self._anchors


def _refine(data: bytes, old: bytes, at: int, direction: int, limit: int) -> int:
    """Walk from a matching sample towards ``limit`` in ``_FINE`` steps; the last match."""
    best, misses = at, 0
    for probe in range(at + direction, limit, direction):
        if probe < 0 or probe + 8 > min(len(data), len(old)) or misses >= _GAP:
            break
        if data[probe : probe + 8] == old[probe : probe + 8]:
            best, misses = probe, 0
        else:
            misses += 1
    return max(best, 0)


def _anchors(fd: int, size: int) -> dict[bytes, int]:
    """Key → old offset for sparse pattern occurrences, read in overlapping 4 MiB windows."""
    anchors: dict[bytes, int] = {}
    last = dict.fromkeys(_PATTERNS, -_SPACING)
    for start in range(0, size, _READ):
        window = os.pread(fd, _READ + _KEY, start)
        for pattern in _PATTERNS:
            at, hits = window.find(pattern, max(0, last[pattern] + _SPACING - start)), 0
            while 0 <= at < _READ and at <= len(window) - _KEY and hits < _MAX_HITS:
                hits += 1
                key = window[at : at + _KEY]
                if len(set(key)) >= _MIN_DISTINCT:
                    anchors.setdefault(key, start + at)
                    last[pattern] = start + at
                    at = window.find(pattern, at + _SPACING)
                else:
                    at = window.find(pattern, at + 1)
    return anchors
