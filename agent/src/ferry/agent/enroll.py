"""Enrolment: register the device, store its credential (0600) and pin the server's root.

The first keyring is trusted only if its own root signed it (and, when the
operator passed ``--root-keyid``, only if that root is the expected one). On
re-enrolment the already pinned root stays in charge: the new keyring must
verify against it, so a re-enrolment cannot swap the root; and the agent presents
its current credential, without which the server refuses to re-enrol an existing id.
Re-enrolment does clear the desired-state sequence floor: it is the operator's way
back for a device whose floor a compromised director key inflated (docs/protocol.md).
"""

from __future__ import annotations

from typing import Any

from ferry.agent import __version__
from ferry.agent.config import AgentConfig
from ferry.agent.errors import AgentError, EnrollmentError, NotEnrolledError
from ferry.agent.identity import DeviceFiles, Identity, TrustState
from ferry.agent.transport import DeviceApi
from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.protocol.errors import ProtocolError
from ferry.protocol.timefmt import utcnow
from ferry.protocol.trust import TrustedState


def enroll(
    config: AgentConfig, server_url: str, token: str, root_keyids: set[str] | None
) -> Identity:
    """Register with the server and persist identity and trust; raises EnrollmentError."""
    api = DeviceApi(
        server_url, None, timeout_s=config.server.timeout_s, verify=config.server.ca_file or True
    )
    files = DeviceFiles(config.state_dir)
    body: dict[str, Any] = {
        "enrollment_token": token,
        "device_id": config.device_id,
        "hardware": config.hardware,
        "agent_version": __version__,
        "tags": config.tags,
    }
    body.update(_proof_of_identity(files, config.device_id, server_url))
    try:
        answer = api.enroll(body)
    except AgentError as exc:
        raise EnrollmentError(f"enrolment at {server_url} failed: {exc}") from exc
    finally:
        api.close()
    trust = _pin_keyring(files, answer.get("keyring"), root_keyids)
    identity = _identity(answer, server_url)
    files.save_identity(identity)
    files.save_trust(trust)
    return identity


def _proof_of_identity(
    files: DeviceFiles, device_id: str | None, server_url: str
) -> dict[str, Any]:
    """The id and current credential of an earlier enrolment at the same server, if any.

    The server re-enrols an existing id only for a caller that presents its current
    credential (or with an operator's approval), so a token alone cannot take a device
    over. The credential goes only to the server that issued it.
    """
    try:
        previous = files.load_identity()
    except NotEnrolledError:
        return {}
    if previous.server_url != server_url or device_id not in (None, previous.device_id):
        return {}
    return {"device_id": previous.device_id, "credential": previous.credential}


def _pin_keyring(files: DeviceFiles, envelope: Any, root_keyids: set[str] | None) -> TrustState:
    now = utcnow()
    try:
        previous = files.load_trust()
    except NotEnrolledError:
        previous = None
    try:
        if previous is None:
            return TrustState(TrustedState.first(envelope, now, root_keyids))
        previous.chain.verify_keyring(envelope, now)
    except ProtocolError as exc:
        raise EnrollmentError(f"the server's keyring was refused ({exc.code}): {exc}") from exc
    return TrustState(previous.chain)  # the pinned root chain stays; the sequence floor does not


def _identity(answer: dict[str, Any], server_url: str) -> Identity:
    credential = answer.get("credential")
    device_id = answer.get("device_id")
    if not isinstance(credential, str) or not credential.startswith(DEVICE_TOKEN_PREFIX):
        raise EnrollmentError("the server's answer has no device credential")
    if not isinstance(device_id, str) or not device_id:
        raise EnrollmentError("the server's answer has no device id")
    groups = answer.get("groups") or []
    mqtt = answer.get("mqtt")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise EnrollmentError("the server's answer has malformed groups")
    if mqtt is not None and not (isinstance(mqtt, dict) and isinstance(mqtt.get("url"), str)):
        raise EnrollmentError("the server's answer has a malformed mqtt section")
    interval = answer.get("poll_interval_s", 300)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise EnrollmentError("the server's answer has a malformed poll_interval_s")
    return Identity(device_id, server_url, tuple(groups), mqtt, float(interval), credential)
