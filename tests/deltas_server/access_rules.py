"""Access rule of the delta route, merged into tests/server/test_auth_walk.py."""

from __future__ import annotations

READ = {"admin", "publisher", "approver", "operator", "viewer"}  # and devices, like blobs

ACCESS: dict[tuple[str, str], str | set[str]] = {
    ("GET", "/api/v1/deltas/{from_sha256}/{to_sha256}"): READ,
    ("HEAD", "/api/v1/deltas/{from_sha256}/{to_sha256}"): READ,
    ("GET", "/api/v1/deltas/{from_sha256}/{to_sha256}/descriptor"): READ,
    ("GET", "/api/v1/models/{ns}/{name}/versions/{ref}/deltas"): READ,  # API tokens only
}
