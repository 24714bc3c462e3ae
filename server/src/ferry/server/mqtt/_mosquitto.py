"""The embedded broker when Mosquitto is installed: a supervised ``mosquitto`` child process.

``ferry server`` without ``FERRY_MQTT_URL`` runs the same broker production runs,
configured by the server under its data directory (``<data>/mqtt/``): a listener
on 127.0.0.1, the server's password file and ACL (the per-device patterns of
``firmware_examples/mosquitto/acl``, rendered by `render_acl`), a pid file for
``SIGHUP`` reloads, client ids bound to logins (``use_username_as_clientid``) and
persistence saved after every change, so a queued status report survives a crash
of the broker. The child dies with the server (``PR_SET_PDEATHSIG`` on Linux)
and is restarted by the server when it dies alone.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ferry.protocol import topics
from ferry.server.mqtt._errors import BrokerStartError

log = logging.getLogger("ferry.server.mqtt")

CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "mosquitto")
START_TIMEOUT_S = 10.0
RESTART_DELAY_S = 0.5
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


def find_mosquitto(preferred: str = "") -> str | None:
    """The mosquitto executable: ``preferred`` if given (and executable), else the usual places."""
    for candidate in (preferred,) if preferred else CANDIDATES:
        path = candidate if "/" in candidate else shutil.which(candidate)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def render_acl(server_usernames: Iterable[str]) -> str:
    """The topic ACL: each server login reads and writes everything, each device its own topics.

    ``firmware_examples/mosquitto/acl`` is this text for the default server login
    (a test keeps the two equal).
    """
    prefix = topics.PREFIX
    lines = [
        "# Ferry topic ACL (Mosquitto acl_file). %u is the login name = the device id.",
        "",
        "# The Ferry server (one `user` block per replica login): publishes notices,",
        "# reads every device's status.",
    ]
    for username in sorted(set(server_usernames)):
        lines += [f"user {username}", f"topic readwrite {prefix}/#"]
    lines += [
        "",
        "# Every device: its own notice topic, the notices of any group, its own status.",
        f"pattern read {prefix}/devices/%u/notice",
        f"pattern read {prefix}/groups/+/notice",
        f"pattern write {prefix}/devices/%u/status",
        "",
    ]
    return "\n".join(lines)


def render_config(state_dir: Path, host: str, port: int) -> str:
    """mosquitto.conf for the embedded broker; every path under ``state_dir``."""
    lines = [
        "# Written by `ferry server` at each start; edits are lost. See docs/mqtt.md.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"listener {port} {host}",
        # A device cannot take over another device's or the server's session.
        "use_username_as_clientid true",
        f"password_file {state_dir / 'passwd'}",
        f"acl_file {state_dir / 'acl'}",
        f"pid_file {state_dir / 'mosquitto.pid'}",
        "persistence true",
        f"persistence_location {state_dir}/",
        # Save after every change: a kill -9 of the broker loses no queued report.
        "autosave_on_changes true",
        "autosave_interval 1",
        "max_queued_messages 100000",
        "max_inflight_messages 1000",
        f"log_dest file {state_dir / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:  # as root Mosquitto would switch to `mosquitto`, who cannot read these
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


# Resolved once in the parent: after fork the child only calls this function, nothing that
# could take a lock another thread of the parent held at fork time.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Mosquitto binds: connections of a broker that just died (TIME_WAIT) do not
        # hold the port, so a worker taking the broker over can start it at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)
    return True


def _wait_listening(host: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while process.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    raise BrokerStartError(f"mosquitto did not listen on {host}:{port}")


class MosquittoBroker:
    """One supervised ``mosquitto -c <state_dir>/mosquitto.conf``.

    A single supervisor thread starts the child, waits for it and restarts it
    when it exits on its own; the child's parent-death signal is tied to that
    thread, which lives until `stop`.
    """

    def __init__(
        self,
        binary: str,
        state_dir: Path,
        host: str,
        port: int,
        *,
        server_usernames: Iterable[str],
        operator_acl: Path | None = None,
        write_passwords: Callable[[], object] = lambda: None,
    ) -> None:
        self.binary = binary
        self.state_dir = state_dir
        self.host, self.port = host, port
        self.server_usernames = tuple(server_usernames)
        self.operator_acl = operator_acl
        self._write_passwords = write_passwords  # after the state dir is ours, before the child
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._start_error: BrokerStartError | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "mosquitto.conf"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "mosquitto.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "mosquitto.log"

    def write_files(self) -> None:
        """Config and ACL (the password file is the service's, written before `start`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)  # a stale pid must never receive our SIGHUP
        acl = render_acl(self.server_usernames)
        if self.operator_acl is not None and self.operator_acl.is_file():
            acl += "\n# From the operator's ACL file " + str(self.operator_acl) + "\n"
            acl += self.operator_acl.read_text()
        self.conf_path.write_text(render_config(self.state_dir, self.host, self.port))
        (self.state_dir / "acl").write_text(acl)

    def _lock_state_dir(self) -> None:
        """One broker per state dir: two would share (and corrupt) one persistence file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise BrokerStartError(
                f"another server's embedded broker uses {self.state_dir}"
            ) from exc
        self._lock_fd = fd

    def _unlock_state_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    async def start(self) -> None:
        if not _port_is_free(self.host, self.port):
            raise BrokerStartError(
                f"embedded MQTT broker cannot listen on {self.host}:"
                f"{self.port}: the address is in use"
            )
        self._lock_state_dir()
        try:
            await self._start_child()
        except BrokerStartError:
            self._unlock_state_dir()
            raise

    async def _start_child(self) -> None:
        self.write_files()
        self._write_passwords()
        self._thread = threading.Thread(target=self._supervise, name="ferry-mosquitto", daemon=True)
        self._thread.start()
        self._started.wait(START_TIMEOUT_S + 5)
        if self._start_error is not None or self.process is None:
            self._stopping.set()
            raise self._start_error or BrokerStartError("mosquitto did not start in time")
        log.info(
            "embedded broker: mosquitto started",
            extra={
                "fields": {
                    "pid": self.process.pid,
                    "listener": f"{self.host}:{self.port}",
                    "config": str(self.conf_path),
                }
            },
        )

    async def stop(self) -> None:
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()  # Mosquitto saves its persistence file on SIGTERM
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S + 5)
        self._unlock_state_dir()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as out:
            process = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (above)
                start_new_session=True,
            )
        self.process = process
        try:
            _wait_listening(self.host, self.port, process)
        except BrokerStartError:
            process.kill()
            process.wait()
            raise
        return process

    def _supervise(self) -> None:
        try:
            process = self._spawn()
        except (BrokerStartError, OSError) as exc:
            self._start_error = BrokerStartError(f"{exc}; see {self.log_path}")
            self._started.set()
            return
        self._started.set()
        while True:
            code = process.wait() if not self._stopping.is_set() else None
            if self._stopping.is_set():
                self._reap(process)
                return
            log.error(
                "embedded broker: mosquitto exited; restarting it",
                extra={"fields": {"exit_code": code, "log": str(self.log_path)}},
            )
            self._stopping.wait(RESTART_DELAY_S)
            try:
                process = self._spawn() if not self._stopping.is_set() else process
                self.restarts += 1
            except (BrokerStartError, OSError):
                log.exception("embedded broker: mosquitto did not restart; retrying")

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
