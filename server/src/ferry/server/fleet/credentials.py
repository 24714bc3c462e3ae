"""Device secrets: enrolment tokens, device credentials and MQTT passwords.

Only hashes are stored. API-style secrets use sha256 (they are long random
strings); MQTT passwords are hashed in Mosquitto's own ``$7$`` PBKDF2-SHA512
format so the broker can check them from a password file without the server.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

from sqlmodel import Session, col, select

from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.fleet.tables import Device

ENROLLMENT_TOKEN_PREFIX = "fre_"
MOSQUITTO_ITERATIONS = 101
_SALT_BYTES = 12


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<b64 salt>$<b64 pbkdf2-sha512>``, as ``mosquitto_passwd`` writes."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, MOSQUITTO_ITERATIONS)
    return (
        f"$7${MOSQUITTO_ITERATIONS}${base64.b64encode(salt).decode()}"
        f"${base64.b64encode(digest).decode()}"
    )


def device_principal(device: Device) -> Principal:
    """Devices act with the ``device`` role in their own namespace only."""
    return Principal(
        token_id=0,
        name=f"device:{device.id}",
        role=ServerRole.DEVICE,
        namespaces=(device.namespace,),
    )


def device_id_of(principal: Principal) -> str:
    return principal.name.removeprefix("device:")


def authenticate_device(session: Session, secret: str) -> Principal | None:
    """The ``frd_`` authenticator: unknown or revoked credentials get nobody (401)."""
    if not secret.startswith(DEVICE_TOKEN_PREFIX):
        return None
    device = session.exec(
        select(Device).where(Device.credential_hash == sha256_hex(secret))
    ).first()
    if device is None or device.revoked_at is not None:
        return None
    return device_principal(device)


@dataclass(frozen=True)
class BrokerCredential:
    """One line of the broker's password file (username is the device id)."""

    username: str
    password_hash: str
    device_id: str


def broker_credentials(session: Session) -> list[BrokerCredential]:
    """Every live device's MQTT login; revoked devices are absent, so a resync locks them out."""
    rows = session.exec(
        select(Device.id, Device.mqtt_password_hash)
        .where(col(Device.revoked_at).is_(None), Device.mqtt_password_hash != "")
        .order_by(Device.id)
    ).all()
    return [BrokerCredential(device_id, pw_hash, device_id) for device_id, pw_hash in rows]
