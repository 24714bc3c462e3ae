"""Errors of the device agent, each with a stable ``code`` reported to the server.

Refusals of received data keep the ``ProtocolError.code`` of ``ferry.protocol``
(``untrusted_key``, ``hash_mismatch``…); everything else the agent can fail at is
an ``AgentError``. Like Mender's client, every error is classified: a *transient*
one (server unreachable, broker down) is retried with backoff and leaves the
update where it was; a *fatal* one ends the update in ``failed`` or ``rolled_back``.

    AgentError                       agent_error
    ├── ConfigError                  config_invalid          fatal
    ├── NotEnrolledError             not_enrolled            fatal
    ├── EnrollmentError              enrollment_failed       fatal
    ├── TransportError               transport_error         transient
    │   ├── ServerUnreachableError   server_unreachable      transient
    │   ├── ServerError              server_error            transient
    │   ├── DownloadTimeoutError     download_timeout        transient (reported)
    │   ├── UnauthorizedError        unauthorized            fatal
    │   ├── NotFoundError            not_found               fatal
    │   ├── RangeNotSatisfiableError range_not_satisfiable   fatal
    │   └── DocumentTooLargeError    document_too_large      fatal
    ├── DiskFullError                disk_full               fatal
    ├── InstallError                 install_failed          fatal
    ├── ProbeError                   probe_failed            fatal
    │   └── ProbeTimeoutError        probe_timeout           fatal
    ├── RebootLoopError              reboot_loop             fatal
    ├── StopRequestedError           stopping                transient
    └── NothingToRollBackError       no_previous_version     fatal
"""

from __future__ import annotations

from ferry.protocol.errors import ProtocolError


class AgentError(Exception):
    """Base of every agent error; ``transient`` errors are retried, fatal ones end the update."""

    code = "agent_error"
    transient = False


class ConfigError(AgentError):
    """The config file is missing, not TOML, or has a bad key (the message names it)."""

    code = "config_invalid"


class NotEnrolledError(AgentError):
    """The agent has no credential yet: run ``ferry-agent enroll`` first."""

    code = "not_enrolled"


class EnrollmentError(AgentError):
    """The server refused the enrolment or answered something unusable."""

    code = "enrollment_failed"


class TransportError(AgentError):
    """Talking to the server failed; the update waits and retries."""

    code = "transport_error"
    transient = True


class ServerUnreachableError(TransportError):
    """Connection refused, reset or timed out."""

    code = "server_unreachable"


class ServerError(TransportError):
    """The server answered 5xx or 429."""

    code = "server_error"


class DownloadTimeoutError(TransportError):
    """A transfer ran past its deadline or below the minimum rate (slow retrieval).

    Transient: the partial file is kept and the download resumes later; unlike the
    other transient errors it is reported, so the fleet view shows the stall.
    """

    code = "download_timeout"


class UnauthorizedError(TransportError):
    """The device credential was refused (revoked device): retrying will not help."""

    code = "unauthorized"
    transient = False


class NotFoundError(TransportError):
    """The server does not have what the signed desired state points at."""

    code = "not_found"
    transient = False


class RangeNotSatisfiableError(TransportError):
    """The server answered 416 to a resume: asking again cannot help, starting over may."""

    code = "range_not_satisfiable"
    transient = False


class DocumentTooLargeError(TransportError):
    """A metadata document is larger than the agent accepts (endless data)."""

    code = "document_too_large"
    transient = False


class DiskFullError(AgentError):
    """Not enough free space to stage the bundle; checked before downloading."""

    code = "disk_full"


class InstallError(AgentError):
    """Moving the staged bundle into place or switching the link failed."""

    code = "install_failed"


class ProbeError(AgentError):
    """The health probe exited non-zero or raised."""

    code = "probe_failed"


class ProbeTimeoutError(ProbeError):
    """The health probe did not finish within its timeout and was killed."""

    code = "probe_timeout"


class RebootLoopError(AgentError):
    """The agent restarted in the middle of the same step too many times."""

    code = "reboot_loop"


class StopRequestedError(AgentError):
    """The daemon is shutting down: a download stops between chunks and resumes next start."""

    code = "stopping"
    transient = True


class NothingToRollBackError(AgentError):
    """A manual rollback was asked for but no previous version is on disk."""

    code = "no_previous_version"


def error_code(exc: BaseException) -> str:
    """The stable code reported for ``exc``: protocol refusals keep their own code."""
    if isinstance(exc, (AgentError, ProtocolError)):
        return exc.code
    return "internal_error"


def is_transient(exc: BaseException) -> bool:
    """Transient errors are retried later; everything else ends the update."""
    return isinstance(exc, AgentError) and exc.transient
