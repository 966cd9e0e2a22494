"""InRelease signatures: gpgv run against the archive keyrings and judged as apt judges it.

Only the text gpgv reports as signed is returned (never the file around it). A signature counts
only with GOODSIG *and* VALIDSIG and a strong hash, by a key in the given keyrings (binary or
ASCII-armored); expired or revoked keys, expired signatures and BADSIG never count. The signers'
primary-key fingerprints go into the lock. Used by archive.py; split from it to keep each module
small (the gpgv status parsing is self-contained).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lockbuild.errors import IntegrityError


def _gpg_status(stdout: bytes) -> list[list[str]]:
    lines = stdout.decode("utf-8", "replace").splitlines()
    return [ln.split()[1:] for ln in lines if ln.startswith("[GNUPG:] ") and len(ln.split()) > 1]


# OpenPGP hash algorithms apt refuses in Release signatures (MD5, SHA1, RIPEMD160).
WEAK_HASH_ALGOS = {"1": "MD5", "2": "SHA1", "3": "RIPEMD160"}
# gpgv outcomes that make a signature worthless for apt (the signature maths may still check out:
# gpgv then also prints VALIDSIG, so VALIDSIG alone proves nothing).
_WORTHLESS = {
    "EXPKEYSIG": "made by an expired key",
    "REVKEYSIG": "made by a revoked key",
    "EXPSIG": "expired signature",
    "BADSIG": "bad signature",
}


@dataclass(frozen=True)
class SignatureCheck:
    """gpgv's verdict on one clear-signed InRelease."""

    text: bytes  # the signed Release text (only what the signature covers)
    signers: tuple[str, ...]  # primary-key fingerprints of the good signatures, sorted
    refused: tuple[str, ...]  # one reason per worthless signature ("key 1234…: made by an expired key")


def _signature_groups(status: list[list[str]]) -> list[list[list[str]]]:
    groups: list[list[list[str]]] = []
    for s in status:
        if s[0] == "NEWSIG" or not groups:
            groups.append([])
        if s[0] != "NEWSIG":
            groups[-1].append(s)
    return groups


def judge_signatures(status: list[list[str]]) -> tuple[list[str], list[str]]:
    """(good signer fingerprints, reasons for refused signatures) from gpgv's status lines, as apt
    judges them: a signature counts only with GOODSIG *and* VALIDSIG and a strong hash; EXPKEYSIG
    (expired key), REVKEYSIG (revoked key), EXPSIG and BADSIG never count; signatures by keys outside
    the keyring (ERRSIG/NO_PUBKEY) are ignored."""
    good: list[str] = []
    refused: list[str] = []
    for group in _signature_groups(status):
        kinds = {s[0]: s for s in group}
        validsig = kinds.get("VALIDSIG")
        # VALIDSIG <fpr> <date> <ts> <expire-ts> <version> <reserved> <pk-algo> <hash-algo> <class> <primary-fpr>
        primary = (validsig[10] if len(validsig) > 10 else validsig[1]).upper() if validsig else ""
        for kind, why in _WORTHLESS.items():
            if kind in kinds:
                keyid = kinds[kind][1] if len(kinds[kind]) > 1 else "?"
                if kind == "EXPKEYSIG" and "KEYEXPIRED" in kinds and len(kinds["KEYEXPIRED"]) > 1:
                    ts = kinds["KEYEXPIRED"][1]
                    if ts.isdigit():
                        why += f" (expired {datetime.fromtimestamp(int(ts), UTC):%Y-%m-%d %H:%M UTC})"
                refused.append(f"key {primary or keyid}: {why}")
                break
        else:
            if "GOODSIG" in kinds and validsig:
                algo = validsig[8] if len(validsig) > 8 else ""
                if algo in WEAK_HASH_ALGOS:
                    refused.append(f"key {primary}: signature uses the weak digest {WEAK_HASH_ALGOS[algo]}")
                else:
                    good.append(primary)
    return sorted(set(good)), refused


def _keyring_files(keyrings: Path | Sequence[Path], tmp: Path) -> list[Path]:
    """Keyrings as gpgv reads them: binary ones as they are, ASCII-armored ones (.asc) dearmored."""
    paths = [keyrings] if isinstance(keyrings, Path) else list(keyrings)
    out = []
    for i, kr in enumerate(paths):
        if not kr.is_file():
            raise IntegrityError(
                f"OpenPGP keyring {kr} not found",
                hint="install it with `apt-get install debian-archive-keyring`, or fix [target] keyring "
                "in lockbuild.toml",
            )
        data = kr.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN PGP"):
            out.append(_dearmor(data, kr, tmp / f"keyring-{i}.gpg"))
        else:
            out.append(kr.resolve())
    return out


def _dearmor(data: bytes, where: Path, dest: Path) -> Path:
    import base64
    import binascii

    data = data.replace(b"\r\n", b"\n")
    blobs = []
    for m in re.finditer(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----",
                         data, re.S):
        body = m.group(1).split(b"\n\n", 1)[-1] if b"\n\n" in m.group(1) else m.group(1)
        lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith(b"=")]
        try:
            blobs.append(base64.b64decode(b"".join(lines), validate=True))
        except binascii.Error:
            blobs = []
            break
    if not blobs:
        raise IntegrityError(f"OpenPGP keyring {where} is ASCII-armored but holds no readable public key block",
                             hint="export it again with `gpg --export --armor FINGERPRINT`, or use a binary "
                             "keyring (`gpg --export`)")
    dest.write_bytes(b"".join(blobs))
    return dest


def check_inrelease(data: bytes, keyrings: Path | Sequence[Path], label: str) -> SignatureCheck:
    """Verify a clear-signed InRelease with gpgv against `keyrings`, judged as apt judges it.

    At least one good signature (GOODSIG + VALIDSIG, strong hash) by a key in the keyrings is
    required; a signature by an expired or revoked key, an expired signature, a weak hash or a
    BADSIG is refused. Signatures by keys outside the keyrings are ignored.
    """
    if not data.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        raise IntegrityError(
            f"{label}: InRelease is not a clear-signed OpenPGP message",
            hint="the mirror served something else (captive portal? proxy error page?); check the mirror URL",
        )
    names = ", ".join(str(k) for k in ([keyrings] if isinstance(keyrings, Path) else keyrings))
    with tempfile.TemporaryDirectory(prefix="lockbuild-gpgv-") as tmp:
        signed, out = Path(tmp, "InRelease"), Path(tmp, "Release")
        signed.write_bytes(data)
        cmd = ["gpgv", "--homedir", tmp, "--status-fd", "1"]
        for kr in _keyring_files(keyrings, Path(tmp)):
            cmd += ["--keyring", str(kr)]
        cmd += ["--output", str(out), str(signed)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError:
            raise IntegrityError("gpgv is not installed: InRelease signatures cannot be checked",
                                 hint="install it with `apt-get install gpgv`") from None
        status = _gpg_status(proc.stdout)
        good, refused = judge_signatures(status)
        bad = [s for s in status if s[0] == "BADSIG"]
        if bad or not good or not out.is_file():
            if refused and not bad:
                detail = "; ".join(refused)
                raise IntegrityError(
                    f"{label}: InRelease signature refused: {detail} (keyring {names})",
                    hint="apt refuses such signatures too; if the archive rotated its keys, update "
                    "debian-archive-keyring (or [target] keyring); otherwise the mirror serves a stale or "
                    "forged index: use another mirror",
                )
            detail = "; ".join(" ".join(s[:2]) for s in status if s[0] in ("BADSIG", "ERRSIG", "NO_PUBKEY"))
            raise IntegrityError(
                f"{label}: InRelease signature does not verify against {names}"
                + (f" ({detail})" if detail else ""),
                hint="the index may be tampered with or the mirror is broken; do not use it. If the archive "
                "rotated its keys, update debian-archive-keyring (or [target] keyring in lockbuild.toml)",
            )
        return SignatureCheck(out.read_bytes(), tuple(good), tuple(refused))
