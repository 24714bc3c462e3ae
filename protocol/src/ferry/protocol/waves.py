"""Deterministic rollout-wave membership, computable by server and device alike.

A device's bucket is a stable hash of (the rollout's wave seed, device id) in
[0, 10000); wave k with cumulative percentage p contains the buckets below p·100.
The same inputs give the same wave on every replica and every run.

The seed is `rollout_seed` of what the rollout asks for (model, the version's
manifest digest, slot, selector, waves), not its id, so a plan made before the
rollout exists (`POST /rollouts/plan`) names exactly the devices each wave will
hold. ``wave_index`` takes any seed string (rollouts created before seeds existed
used their id, ``r-12``).
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def rollout_seed(
    model: str, manifest_sha256: str, slot: str, selector: str, cumulative_percents: list[int]
) -> str:
    """The wave seed of a rollout: 16 hex digits of sha256 over what it asks for.

    ``selector`` is its canonical text (sorted terms, as the server prints it).
    """
    text = "\x00".join(
        [
            "ferry-waves-v1",
            model,
            manifest_sha256,
            slot,
            selector,
            ",".join(map(str, cumulative_percents)),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
