"""Device-facing HTTP paths, shared so that server routes and agent requests agree."""

from __future__ import annotations

API = "/api/v1"

KEYRING = f"{API}/keyring"
KEYRING_VERSION = f"{API}/keyring/{{version}}"
ENROLL = f"{API}/device/enroll"
DESIRED_STATE = f"{API}/device/desired-state"
STATUS = f"{API}/device/status"
MANIFEST = f"{API}/manifests/{{sha256}}"
BLOB = f"{API}/blobs/{{sha256}}"
DELTA = f"{API}/deltas/{{from_sha256}}/{{to_sha256}}"
DELTA_DESCRIPTOR = DELTA + "/descriptor"  # ?from_manifest=&to_manifest=&path=

DEVICE_TOKEN_PREFIX = "frd_"
API_TOKEN_PREFIX = "fry_"
