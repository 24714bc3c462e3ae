"""Errors raised while parsing or verifying what crosses the wire.

Every refusal has its own class and a stable ``code`` string: the agent reports
the code in its status, the server returns it in its error body, and tests assert
on it. Blame is split as in python-tuf: bad data from the other side is a
``ProtocolError``; a caller misusing the API is a plain ``RuntimeError``.

    ProtocolError
    ├── MalformedError                 malformed
    └── VerificationError              verification_failed
        ├── UntrustedKeyError          untrusted_key
        ├── BadSignatureError          bad_signature
        ├── ExpiredError               expired
        │   ├── ExpiredKeyringError        expired_keyring
        │   └── ExpiredDesiredStateError   expired_desired_state
        ├── RollbackError              rollback
        │   ├── KeyringRollbackError       keyring_rollback
        │   ├── SequenceRollbackError      sequence_rollback
        │   └── VersionDowngradeError      version_downgrade
        ├── WrongDeviceError           wrong_device
        ├── IncompatibleHardwareError  incompatible_hardware
        ├── DigestMismatchError        manifest_mismatch
        ├── VersionConflictError       version_conflict
        ├── LengthExceededError        length_exceeded
        ├── TruncatedError             truncated
        └── HashMismatchError          hash_mismatch
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error about data received from the other side."""

    code = "protocol_error"


class MalformedError(ProtocolError):
    """The bytes are not a well-formed document of the expected type."""

    code = "malformed"


class VerificationError(ProtocolError):
    """A well-formed document failed a trust check."""

    code = "verification_failed"


class UntrustedKeyError(VerificationError):
    """Not enough signatures by keys that the trusted keyring lists for the role."""

    code = "untrusted_key"


class BadSignatureError(VerificationError):
    """A signature by a trusted key does not verify over the canonical bytes."""

    code = "bad_signature"


class ExpiredError(VerificationError):
    """The document is past its expiry (freeze attack)."""

    code = "expired"


class ExpiredKeyringError(ExpiredError):
    """The keyring has expired."""

    code = "expired_keyring"


class ExpiredDesiredStateError(ExpiredError):
    """The desired state has expired."""

    code = "expired_desired_state"


class RollbackError(VerificationError):
    """The document is older than one already accepted (rollback attack)."""

    code = "rollback"


class KeyringRollbackError(RollbackError):
    """The keyring version is lower than the trusted one."""

    code = "keyring_rollback"


class SequenceRollbackError(RollbackError):
    """The desired-state sequence is not higher than the last accepted one."""

    code = "sequence_rollback"


class VersionDowngradeError(RollbackError):
    """The bundle version is lower than the installed one and not a signed rollback."""

    code = "version_downgrade"


class WrongDeviceError(VerificationError):
    """The desired state is addressed to another device."""

    code = "wrong_device"


class IncompatibleHardwareError(VerificationError):
    """The bundle does not list this device's hardware."""

    code = "incompatible_hardware"


class DigestMismatchError(VerificationError):
    """The manifest is not the one the desired state points at."""

    code = "manifest_mismatch"


class VersionConflictError(VerificationError):
    """A different manifest for a model version already installed (same version, other hash)."""

    code = "version_conflict"


class LengthExceededError(VerificationError):
    """More bytes arrived than declared (endless-data attack)."""

    code = "length_exceeded"


class TruncatedError(VerificationError):
    """Fewer bytes arrived than declared."""

    code = "truncated"


class HashMismatchError(VerificationError):
    """The bytes do not hash to the declared sha256."""

    code = "hash_mismatch"
