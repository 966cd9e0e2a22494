"""Key files: a PEM PKCS#8 ECDSA P-256 private key (optionally passphrase-protected, the passphrase
read from an environment variable) signs; a PEM public key verifies. Signatures are DER ECDSA over
SHA-256. A key's id is the sha256 hex of its DER SubjectPublicKeyInfo. Nothing here prints, logs or
writes key material.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lockbuild.errors import LockbuildError


def _spki_der(public_key) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_p256(key, path: Path, what: str) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise LockbuildError(f"{path} is not an ECDSA P-256 {what}",
                        hint="make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`",
                        where=str(path))


class Signer:
    """Signs bytes with a private key: DER ECDSA P-256 / SHA-256."""

    def __init__(self, key) -> None:  # type: ignore[no-untyped-def]
        self._key = key

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return bytes(self._key.sign(data, ec.ECDSA(hashes.SHA256())))

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))


class Verifier:
    """Checks signatures made by one public key; ``key_id`` is sha256 hex of its DER SPKI."""

    def __init__(self, key) -> None:  # type: ignore[no-untyped-def]
        self._key = key
        self.key_id = hashlib.sha256(_spki_der(key)).hexdigest()

    def verify(self, data: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise LockbuildError(f"cannot read the {what} {path}: {e.strerror}", hint="check the path",
                             where=str(path)) from None


def load_private_key(path: Path, passphrase_env: str | None = "LOCKBUILD_KEY_PASSWORD") -> Signer:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "private key")
    password = os.environ.get(passphrase_env) if passphrase_env else None
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise LockbuildError(f"{path} is encrypted and no passphrase is set",
                        hint=f"export the passphrase in ${passphrase_env}", where=str(path)) from None
    except ValueError:
        raise LockbuildError(f"{path} is not a readable PEM private key (or the passphrase is wrong)",
                        hint="use a PEM PKCS#8 ECDSA P-256 key", where=str(path)) from None
    _check_p256(key, path, "private key")
    return Signer(key)


def load_public_key(path: Path) -> Verifier:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise LockbuildError(f"{path} is not a readable PEM public key", hint="use a PEM SubjectPublicKeyInfo key",
                        where=str(path)) from None
    _check_p256(key, path, "public key")
    return Verifier(key)
