"""Deterministic rollout-wave membership, computable by server and device alike.

A device's bucket is a stable hash of (rollout id, device id) in [0, 10000);
wave k with cumulative percentage p contains the buckets below p·100. The same
inputs give the same wave on every replica and every run.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def wave_bucket(rollout_id: str, device_id: str) -> int:
    """The device's bucket for this rollout, uniform in [0, BUCKETS)."""
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def wave_index(rollout_id: str, device_id: str, cumulative_percents: list[int]) -> int:
    """The first wave (0-based) whose cumulative percentage covers the device."""
    bucket = wave_bucket(rollout_id, device_id)
    for index, percent in enumerate(cumulative_percents):
        if bucket < percent * (BUCKETS // 100):
            return index
    return len(cumulative_percents)
