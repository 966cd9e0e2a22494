"""Signing keys: ECDSA P-256 over SHA-256, the one algorithm cosign's and containers/image's key
verification read.

Private keys, read by ``load_private_key``:

* PEM PKCS#8 (``BEGIN PRIVATE KEY``, e.g. ``openssl genpkey -algorithm EC -pkeyopt
  ec_paramgen_curve:P-256``) or SEC1 (``BEGIN EC PRIVATE KEY``, ``openssl ecparam -genkey``);
* the same encrypted with a passphrase (``BEGIN ENCRYPTED PRIVATE KEY``, PKCS#8 PBES2, as
  ``openssl pkcs8 -topk8 -v2 aes-256-cbc`` and ``lockbuild keygen`` write it);
* sigstore/cosign encrypted keys (``BEGIN ENCRYPTED SIGSTORE PRIVATE KEY`` from ``cosign
  generate-key-pair`` or ``skopeo generate-sigstore-key``, older ``ENCRYPTED COSIGN PRIVATE KEY``):
  a JSON body, scrypt key derivation, NaCl secretbox (XSalsa20-Poly1305) around PKCS#8 DER.

The passphrase comes only from an environment variable (``LOCKBUILD_KEY_PASSWORD`` by default),
never from an argument (it would be in the process list and shell history). No message raised
here contains key bytes or the passphrase.

Public keys (``load_public_key``): PEM SubjectPublicKeyInfo (``BEGIN PUBLIC KEY``), what cosign,
skopeo and ``lockbuild keygen`` write. ``key_id`` is the sha256 (hex) of its DER encoding.

Signatures are DER ECDSA. Where the installed ``cryptography`` offers RFC 6979 deterministic
nonces (43+, with OpenSSL 3.2+), signing uses them: the same key and data give the same signature
bytes (``Signer.deterministic`` says whether they do).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.poly1305 import Poly1305

from lockbuild.errors import SigningKeyError

PASSPHRASE_ENV = "LOCKBUILD_KEY_PASSWORD"
SIGSTORE_PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
MAX_KEY_FILE = 64 * 1024  # a PEM key is < 1 KiB; refuse to read a wrong, huge file into memory


class Signer(Protocol):
    """What signs: a key file here, a KMS later (one module with these members)."""

    key_id: str  # sha256 hex of the DER SubjectPublicKeyInfo
    deterministic: bool  # the same data always gives the same signature bytes

    def sign(self, data: bytes) -> bytes:
        """DER-encoded ECDSA P-256 signature over sha256(data)."""
        ...

    def public_pem(self) -> bytes:
        """The public half as PEM SubjectPublicKeyInfo."""
        ...


def _ecdsa(deterministic: bool) -> ec.ECDSA:
    if deterministic:
        return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    return ec.ECDSA(hashes.SHA256())


@functools.cache
def _deterministic_supported() -> bool:
    try:
        key = ec.derive_private_key(1, ec.SECP256R1())
        return key.sign(b"x", _ecdsa(True)) == key.sign(b"x", _ecdsa(True))
    except (TypeError, UnsupportedAlgorithm):
        return False


def _spki_der(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id_of(public: ec.EllipticCurvePublicKey) -> str:
    import hashlib

    return hashlib.sha256(_spki_der(public)).hexdigest()


class Verifier:
    """An ECDSA P-256 public key: ``verify(data, der_signature) -> bool``."""

    def __init__(self, public: ec.EllipticCurvePublicKey, source: str = "") -> None:
        self._public = public
        self.source = source
        self.key_id = key_id_of(public)

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            self._public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def public_pem(self) -> bytes:
        return self._public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def __repr__(self) -> str:
        return f"Verifier(key_id={self.key_id[:16]}…)"


class FileSigner:
    """A P-256 private key read from a file (kept only in this object; never printed)."""

    def __init__(self, private: ec.EllipticCurvePrivateKey, source: str = "") -> None:
        self._private = private
        self.source = source
        self.key_id = key_id_of(private.public_key())
        self.deterministic = _deterministic_supported()

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data, _ecdsa(self.deterministic))

    def public_pem(self) -> bytes:
        return self.verifier().public_pem()

    def verifier(self) -> Verifier:
        return Verifier(self._private.public_key(), self.source)

    def __repr__(self) -> str:
        return f"FileSigner(key_id={self.key_id[:16]}…)"


# -- reading ------------------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        if not path.is_file():
            if not path.exists():
                raise FileNotFoundError(path)
            raise SigningKeyError(f"{path} is not a regular file, not a {what}", hint=f"pass the PEM {what} file")
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)  # bounded: /dev/zero or a huge wrong file never fills memory
    except FileNotFoundError:
        hint = ("create a key pair with `lockbuild keygen KEYNAME` (writes KEYNAME.key and KEYNAME.pub)"
                if what == "private key" else "pass the .pub file written by `lockbuild keygen` or cosign")
        raise SigningKeyError(f"no {what} at {path}", hint=hint) from None
    except PermissionError:
        raise SigningKeyError(f"cannot read the {what} {path}: permission denied",
                              hint="run as the key's owner, or fix its permissions (0600 for a private key)") from None
    if len(data) > MAX_KEY_FILE:
        raise SigningKeyError(f"{path} is over {MAX_KEY_FILE // 1024} KiB: not a {what}",
                              hint=f"pass the PEM {what} file (a few hundred bytes)")
    return data


def _pem_type(data: bytes) -> str | None:
    text = data.decode("ascii", errors="replace")
    start = text.find("-----BEGIN ")
    if start < 0:
        return None
    end = text.find("-----", start + 11)
    return text[start + 11:end] if end > 0 else None


def _pem_body(data: bytes, pem_type: str) -> bytes:
    text = data.decode("ascii", errors="replace")
    begin, end = f"-----BEGIN {pem_type}-----", f"-----END {pem_type}-----"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < 0:
        raise ValueError("PEM markers")
    return base64.b64decode("".join(text[i + len(begin):j].split()), validate=True)


def _passphrase(env: str | None, path: Path) -> bytes:
    value = os.environ.get(env) if env else None
    if not value:
        raise SigningKeyError(f"the private key {path} is encrypted and no passphrase was given",
                              hint=f"export {env or PASSPHRASE_ENV}=<passphrase> (read from the environment only, "
                              "never from the command line)")
    return value.encode("utf-8")


def _check_p256(key: object, path: Path, what: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        kind = f"an EC {curve.name} key" if curve is not None else f"a {type(key).__name__.lstrip('_')}"
        raise SigningKeyError(f"{path} holds {kind}, not an ECDSA P-256 {what}",
                              hint="lockbuild signs with ECDSA P-256 (what cosign and containers-policy verify): "
                              "`lockbuild keygen NAME` or `openssl genpkey -algorithm EC -pkeyopt "
                              "ec_paramgen_curve:P-256`")


def load_private_key(path: Path, passphrase_env: str | None = PASSPHRASE_ENV) -> FileSigner:
    """A Signer from a PEM private key file (plain or encrypted PKCS#8/SEC1, or sigstore/cosign encrypted)."""
    path = Path(path)
    data = _read(path, "private key")
    pem_type = _pem_type(data)
    if pem_type in SIGSTORE_PEM_TYPES:
        der = _decrypt_sigstore(data, pem_type, _passphrase(passphrase_env, path), path)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError(f"{path}: the decrypted sigstore key is not a PKCS#8 key",
                                  hint="regenerate the key pair") from None
    elif pem_type in ("PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"):
        encrypted = pem_type == "ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in data
        password = _passphrase(passphrase_env, path) if encrypted else None
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as e:
            if encrypted and ("decrypt" in str(e).lower() or "password" in str(e).lower()
                              or "bad" in str(e).lower()):
                raise SigningKeyError(f"cannot decrypt the private key {path}: wrong passphrase",
                                      hint=f"check ${passphrase_env or PASSPHRASE_ENV}") from None
            raise SigningKeyError(f"{path} is not a readable PEM private key",
                                  hint="pass a PEM PKCS#8 EC P-256 key (`lockbuild keygen NAME`)") from None
        except UnsupportedAlgorithm:
            raise SigningKeyError(f"{path} uses an encryption this build cannot read",
                                  hint="re-encrypt it: `openssl pkcs8 -topk8 -v2 aes-256-cbc`") from None
    elif pem_type == "PUBLIC KEY":
        raise SigningKeyError(f"{path} is a public key; signing needs the private half",
                              hint="pass the .key file (the .pub is for `verify --key` and policies)")
    else:
        raise SigningKeyError(f"{path} is not a PEM private key" + (f" (found {pem_type!r})" if pem_type else ""),
                              hint="pass a PEM EC P-256 private key (`lockbuild keygen NAME` makes one)")
    _check_p256(key, path, "private key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return FileSigner(key, str(path))


def load_public_key(path: Path) -> Verifier:
    """A Verifier from a PEM public key (SubjectPublicKeyInfo, ECDSA P-256)."""
    path = Path(path)
    data = _read(path, "public key")
    pem_type = _pem_type(data)
    if pem_type != "PUBLIC KEY":
        if pem_type and "PRIVATE KEY" in pem_type:
            raise SigningKeyError(f"{path} is a private key; verification takes the public half",
                                  hint="pass the .pub file (never hand the private key to a verifier)")
        raise SigningKeyError(f"{path} is not a PEM public key", hint="pass the .pub file written by "
                              "`lockbuild keygen` (or cosign.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(f"{path} is not a readable PEM public key", hint="pass the .pub file") from None
    _check_p256(key, path, "public key")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return Verifier(key, str(path))


# -- writing (keygen) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str
    encrypted: bool


def generate(prefix: Path, *, passphrase_env: str | None = PASSPHRASE_ENV, encrypt: bool = True,
             sigstore_format: bool = False) -> KeyPair:
    """Write PREFIX.key (mode 0600, encrypted with the passphrase from ``passphrase_env`` unless
    ``encrypt`` is False) and PREFIX.pub (0644). Refuses to overwrite either."""
    from lockbuild.fsutil import atomic_write_bytes

    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for p in (private_path, public_path):
        if p.exists() or p.is_symlink():
            raise SigningKeyError(f"{p} already exists; not overwriting a key",
                                  hint="choose another name, or move the old key pair away first")
    if encrypt:
        value = os.environ.get(passphrase_env) if passphrase_env else None
        if not value:
            raise SigningKeyError("no passphrase to encrypt the new private key with",
                                  hint=f"export {passphrase_env or PASSPHRASE_ENV}=<passphrase>, or pass "
                                  "--no-passphrase for a throwaway key")
        password = value.encode("utf-8")
    key = ec.generate_private_key(ec.SECP256R1())
    if sigstore_format:
        if not encrypt:
            raise SigningKeyError("sigstore-format keys are always encrypted",
                                  hint="set a passphrase, or use the PKCS#8 format")
        pem = _encrypt_sigstore(key, password)
    else:
        algorithm: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if encrypt else serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(private_path, pem, mode=0o600)  # mkstemp creates it 0600: never readable by others
    atomic_write_bytes(public_path, public, mode=0o644)
    return KeyPair(private_path, public_path, key_id_of(key.public_key()), encrypt)


# -- sigstore/cosign encrypted keys: scrypt + NaCl secretbox (XSalsa20-Poly1305) ----------------------


def _decrypt_sigstore(data: bytes, pem_type: str, password: bytes, path: Path) -> bytes:
    try:
        doc = json.loads(_pem_body(data, pem_type))
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
            raise SigningKeyError(f"{path}: unsupported key encryption {kdf.get('name')}/{cipher.get('name')}",
                                  hint="lockbuild reads scrypt + nacl/secretbox (cosign, skopeo)")
        params = kdf["params"]
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        box = base64.b64decode(doc["ciphertext"])
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
    except (KeyError, ValueError, TypeError, AttributeError):
        raise SigningKeyError(f"{path} is not a well-formed sigstore encrypted key",
                              hint="regenerate it with `cosign generate-key-pair` or `lockbuild keygen`") from None
    if len(nonce) != 24 or len(box) < 16 or not (2 <= n <= 1 << 20) or r > 32 or p > 16:
        raise SigningKeyError(f"{path}: implausible sigstore key parameters", hint="regenerate the key pair")
    secret = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)
    plain = _secretbox_open(box, nonce, secret)
    if plain is None:
        raise SigningKeyError(f"cannot decrypt the private key {path}: wrong passphrase",
                              hint=f"check the passphrase environment variable (default ${PASSPHRASE_ENV})")
    return plain


def _encrypt_sigstore(key: ec.EllipticCurvePrivateKey, password: bytes) -> bytes:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt, nonce = os.urandom(32), os.urandom(24)
    n, r, p = 32768, 8, 1  # cosign's and containers/image's parameters
    secret = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)
    doc = {"kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p}, "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(_secretbox_seal(der, nonce, secret)).decode()}
    body = base64.encodebytes(json.dumps(doc).encode()).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + "\n".join(lines)
            + "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n").encode()


_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_M32 = 0xFFFFFFFF
_DOUBLE_ROUND = ((0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),  # columns
                 (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14))  # rows


def _rounds(x: list[int]) -> list[int]:
    """The Salsa20/20 core's 20 rounds (10 double rounds) on a copy of the 16-word state."""
    x = list(x)

    def qr(a: int, b: int, c: int, d: int) -> None:
        t = (x[a] + x[d]) & _M32
        x[b] ^= ((t << 7) | (t >> 25)) & _M32
        t = (x[b] + x[a]) & _M32
        x[c] ^= ((t << 9) | (t >> 23)) & _M32
        t = (x[c] + x[b]) & _M32
        x[d] ^= ((t << 13) | (t >> 19)) & _M32
        t = (x[d] + x[c]) & _M32
        x[a] ^= ((t << 18) | (t >> 14)) & _M32

    for _ in range(10):
        for a, b, c, d in _DOUBLE_ROUND:
            qr(a, b, c, d)
    return x


def _state(key: bytes, sixteen: bytes) -> list[int]:
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", sixteen)
    return [_SIGMA[0], *k[:4], _SIGMA[1], *n, _SIGMA[2], *k[4:], _SIGMA[3]]


def _hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    x = _rounds(_state(key, nonce16))
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def _salsa20_stream(key: bytes, nonce8: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        s = _state(key, nonce8 + struct.pack("<Q", counter))
        x = _rounds(s)
        out += struct.pack("<16I", *((a + b) & _M32 for a, b in zip(x, s, strict=True)))
        counter += 1
    return bytes(out[:length])


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(i ^ j for i, j in zip(a, b, strict=True))


def _secretbox_open(box: bytes, nonce: bytes, key: bytes) -> bytes | None:
    sub = _hsalsa20(key, nonce[:16])
    stream = _salsa20_stream(sub, nonce[16:], 32 + len(box) - 16)
    tag, cipher = box[:16], box[16:]
    try:
        Poly1305.verify_tag(stream[:32], cipher, tag)
    except InvalidSignature:
        return None
    except InvalidTag:  # pragma: no cover - older cryptography
        return None
    return _xor(cipher, stream[32:])


def _secretbox_seal(plain: bytes, nonce: bytes, key: bytes) -> bytes:
    sub = _hsalsa20(key, nonce[:16])
    stream = _salsa20_stream(sub, nonce[16:], 32 + len(plain))
    cipher = _xor(plain, stream[32:])
    return Poly1305.generate_tag(stream[:32], cipher) + cipher
