"""User-facing errors. One place maps every failure to an exit code and a hint.

Stage code raises these; only the CLI prints them (no traceback). Exit codes are
distinct per class so CI scripts can tell a stale lock from a broken model URI.
"""

from __future__ import annotations


class LockbuildError(Exception):
    """Base class: a message, an optional hint (what to do), and an exit code."""

    exit_code = 2
    kind = "error"

    def __init__(self, message: str, hint: str | None = None, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where  # "file:line:col" or "file [key]" when known

    def to_dict(self) -> dict[str, object]:
        return {
            "error": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "where": self.where,
            "hint": self.hint,
        }


class StaleLock(LockbuildError):
    """`lock --check`: the lock does not match its inputs."""

    exit_code = 1
    kind = "stale-lock"


class SpecError(LockbuildError):
    """lockbuild.toml is malformed, has unknown keys or bad values."""

    exit_code = 3
    kind = "spec"


class ModelError(LockbuildError):
    """The MLflow model cannot be found, read or has no environment."""

    exit_code = 4
    kind = "model"


class TrackingServerError(ModelError):
    exit_code = 5
    kind = "tracking-server"


class RequirementsError(ModelError):
    """A requirement line lockbuild cannot pin: -e, VCS/URL, a path or include outside the model."""

    exit_code = 21
    kind = "requirements"


class ResolveError(LockbuildError):
    """Python or Debian resolution failed (no wheel, conflict, unsatisfiable)."""

    exit_code = 6
    kind = "resolve"


class PythonVersionError(ResolveError):
    exit_code = 7
    kind = "python-version"


class LockFileError(LockbuildError):
    """lockbuild.lock is malformed or fails its schema."""

    exit_code = 8
    kind = "lock-file"


class IntegrityError(LockbuildError):
    """A fetched or cached byte does not match its hash or signature."""

    exit_code = 9
    kind = "integrity"


class FetchError(LockbuildError):
    """Network failure after retries."""

    exit_code = 10
    kind = "fetch"


class BuildError(LockbuildError):
    """The image cannot be assembled (conflicting files, unsafe paths, disk full)."""

    exit_code = 11
    kind = "build"


class PublishError(LockbuildError):
    """Writing, loading or pushing the image failed."""

    exit_code = 12
    kind = "publish"


class VerifyFailed(LockbuildError):
    """`verify` found differences between image and lock."""

    exit_code = 13
    kind = "verify"


class SmokeFailed(LockbuildError):
    """`smoke`: the image did not serve the model correctly."""

    exit_code = 14
    kind = "smoke"


class DoctorFailed(LockbuildError):
    exit_code = 15
    kind = "doctor"


class EngineUnavailable(LockbuildError):
    """No Docker engine reachable for load/smoke."""

    exit_code = 16
    kind = "engine"


class SourceBuildError(ResolveError):
    """A source-only dependency (sdist) cannot be built into a wheel hermetically."""

    exit_code = 22
    kind = "source-build"


class LockMismatch(LockbuildError):
    """`lock --check --rederive`: the lock does not re-derive from its spec and model."""

    exit_code = 17
    kind = "lock-mismatch"


class AuditUnavailable(LockbuildError):
    """`lock --check --rederive`: an input the lock pins (InRelease, Packages index) is not available."""

    exit_code = 18
    kind = "audit-unavailable"


class OverlapError(ResolveError):
    """Two resolved distributions write the same files and no variant policy settles it."""

    exit_code = 19
    kind = "overlap"


class InvalidImage(LockbuildError):
    """`verify`/`smoke`: the image cannot even be read as an image (malformed document, tar or blob,
    absurd sizes). Distinct from VerifyFailed (a well-formed image that differs from the lock's)."""

    exit_code = 23
    kind = "invalid-image"


class SigningKeyError(LockbuildError):
    """A signing or verification key is missing, unreadable, of the wrong kind, or its passphrase is wrong."""

    exit_code = 31
    kind = "signing-key"


class NoSignature(LockbuildError):
    """`verify --key`: the image digest carries no signature at all."""

    exit_code = 32
    kind = "no-signature"


class BadSignature(LockbuildError):
    """`verify --key`: signatures exist, but none is valid for this key and this digest."""

    exit_code = 33
    kind = "bad-signature"


class AttestationError(LockbuildError):
    """`verify --key`: a signed attestation is missing, malformed, or its signature does not verify."""

    exit_code = 34
    kind = "attestation"


class AttestedLockMismatch(LockbuildError):
    """`verify --key`: the signed attestations name another lock than the one given."""

    exit_code = 35
    kind = "attested-lock-mismatch"
