"""Access rules of the fleet and rollout routes, merged into tests/server/test_auth_walk.py."""

from __future__ import annotations

READ = {"admin", "publisher", "approver", "operator", "viewer"}
OPERATE = {"admin", "operator"}
PUBLIC = "public"
DEVICE_ONLY = "device-only"

ACCESS: dict[tuple[str, str], str | set[str]] = {
    ("POST", "/api/v1/enrollment-tokens"): OPERATE,
    ("GET", "/api/v1/enrollment-tokens"): OPERATE,
    ("DELETE", "/api/v1/enrollment-tokens/{token_id}"): OPERATE,
    ("POST", "/api/v1/device/enroll"): PUBLIC,
    ("GET", "/api/v1/device/desired-state"): DEVICE_ONLY,
    ("POST", "/api/v1/device/status"): DEVICE_ONLY,
    ("GET", "/api/v1/devices"): READ,
    ("GET", "/api/v1/devices/{device_id}"): READ,
    ("POST", "/api/v1/devices/{device_id}/tags"): OPERATE,
    ("POST", "/api/v1/devices/{device_id}/revoke"): OPERATE,
    ("POST", "/api/v1/devices/{device_id}/approve-reenrollment"): OPERATE,
    ("POST", "/api/v1/rollouts"): OPERATE,
    ("GET", "/api/v1/rollouts"): READ,
    ("GET", "/api/v1/rollouts/{rollout_id}"): READ,
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): OPERATE,
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): OPERATE,
    ("POST", "/api/v1/rollouts/{rollout_id}/advance"): OPERATE,
    ("POST", "/api/v1/rollouts/{rollout_id}/cancel"): OPERATE,
    ("POST", "/api/v1/rollouts/{rollout_id}/rollback"): OPERATE,
    ("GET", "/api/v1/rollouts/{rollout_id}/status"): READ,
    ("GET", "/api/v1/rollouts/{rollout_id}/devices"): READ,
    ("POST", "/api/v1/rollouts/plan"): OPERATE,
    ("PATCH", "/api/v1/rollouts/{rollout_id}/gates"): OPERATE,
    ("GET", "/api/v1/fleet/status"): READ,
    ("PUT", "/api/v1/alias-bindings/{ns}/{name}/{alias}"): OPERATE,
    ("GET", "/api/v1/alias-bindings"): READ,
    ("DELETE", "/api/v1/alias-bindings/{ns}/{name}/{alias}"): OPERATE,
}
