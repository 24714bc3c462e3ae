"""Broker logins: Mosquitto ``$7$`` password hashes and the password file.

The fleet stores each device's broker password only as a Mosquitto hash
(`ferry.server.fleet.credentials.mosquitto_hash`, made at enrolment, the one
moment the plaintext exists). So any replica can rebuild Mosquitto's password
file from the database, and the embedded broker checks a login against the same
hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
from collections.abc import Iterable
from pathlib import Path


def mosquitto_hash(password: str, salt: bytes, iterations: int = 101) -> str:
    """``$7$`` PBKDF2-SHA512, the format ``mosquitto_passwd`` writes in Mosquitto ≥ 2.0."""
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    encode = base64.b64encode
    return f"$7${iterations}${encode(salt).decode()}${encode(derived).decode()}"


def verify_mosquitto_hash(password: str, stored: str) -> bool:
    """Does ``password`` match a ``$7$`` hash? Anything unparsable is a mismatch."""
    try:
        _, kind, iterations, salt, _ = stored.split("$")
        if kind != "7":
            return False
        expected = mosquitto_hash(password, base64.b64decode(salt, validate=True), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), stored.encode())


def render_password_file(logins: Iterable[tuple[str, str]]) -> str:
    """``username:hash`` lines, sorted (a stable file diffs cleanly)."""
    return "".join(f"{user}:{pw_hash}\n" for user, pw_hash in sorted(logins))


def write_password_file(path: Path, logins: Iterable[tuple[str, str]]) -> None:
    """Replace the file atomically (temp file + rename), so Mosquitto never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_password_file(logins))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def signal_reload(pid_file: Path) -> bool:
    """SIGHUP the broker named by its pid file (Mosquitto re-reads passwords and ACL).

    Returns False when there is no such file or process — the operator then
    reloads by hand (``systemctl reload mosquitto``).
    """
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    return True
