"""`lockbuild keygen` and `lockbuild sign`; the `--key` step of `verify` (run before the lock-derived
comparison) lives here too, so proof.py only calls it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lockbuild.cli.common import JsonOpt, LockOpt, SpecOpt, emit_json, err, read_lock_file, spec_file, tracking_uri
from lockbuild.errors import LockbuildError, VerifyFailed

if TYPE_CHECKING:
    from lockbuild.lockfile.io import LockFile

PassEnvOpt = Annotated[str, typer.Option("--passphrase-env", metavar="VAR",
                                         help="environment variable holding the key's passphrase")]


def keygen(
    name: Annotated[Path, typer.Argument(metavar="NAME", help="writes NAME.key (0600) and NAME.pub")],
    passphrase_env: PassEnvOpt = "LOCKBUILD_KEY_PASSWORD",
    no_passphrase: Annotated[bool, typer.Option("--no-passphrase",
                                                help="write the key unencrypted (throwaway keys only)")] = False,
    sigstore: Annotated[bool, typer.Option("--sigstore-format", help="write the private key in cosign's "
                                           "encrypted format (cosign and skopeo --sign-by-sigstore-private-key "
                                           "read it) instead of PKCS#8")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an ECDSA P-256 key pair for `sign`: NAME.key (private, 0600) and NAME.pub.

    NAME.key is encrypted with the passphrase in $LOCKBUILD_KEY_PASSWORD; give NAME.pub to verifiers
    and admission policies. Never overwrites a key.

    Example: [bold]LOCKBUILD_KEY_PASSWORD=… lockbuild keygen release[/]
    """
    from lockbuild.sign.keys import generate

    pair = generate(name, passphrase_env=passphrase_env, encrypt=not no_passphrase, sigstore_format=sigstore)
    summary = {"private_key": str(pair.private), "public_key": str(pair.public), "key_id": pair.key_id,
               "encrypted": pair.encrypted}
    if as_json:
        emit_json(summary)
    else:
        err.print(f"[green]wrote[/] {pair.private} (private, 0600{'' if pair.encrypted else ', UNENCRYPTED'}) and "
                  f"{pair.public}; key id {pair.key_id[:16]}…")


def _load_json(path: Path | None, what: str) -> Any:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LockbuildError(f"{what} {path} does not exist", hint=f"write it with `lockbuild {what.split()[0]} "
                             "--json > FILE`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LockbuildError(f"{what} {path} is not JSON: {e}", hint="pass the --json output of that command") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise LockbuildError(f"{what} {path} is not a lockbuild --json report (no 'ok')",
                             hint="pass the --json output of that command")
    if not doc["ok"]:
        raise VerifyFailed(f"{what} {path} records a failure: refusing to sign",
                           hint="sign only an image that verified and passed smoke")
    return doc


def _store(ref: str, lock: Any, *, push: bool) -> Any:
    from lockbuild.sign.store import LayoutStore, RegistryStore, parse_target

    kind, where = parse_target(ref)
    return RegistryStore(where, push=push) if kind == "registry" else LayoutStore(where, lock.image_name)


def _pinned(store: Any) -> str:
    """What the lock-derived verify reads: the registry image by its digest (never a tag that can move)."""
    from lockbuild.sign.store import RegistryStore

    if isinstance(store, RegistryStore):
        return f"{store.repository}@{store.image()['digest']}"
    return str(store.path)


def run_sign(ref: str, signer: Any, lf: LockFile, *, verify_report: Any, smoke_report: Any, run_verify: bool,
             built: bool, attest: bool = True, signature: bool = True, spec: Path | None = None) -> dict[str, Any]:
    """Verify the image unless told otherwise, then sign and attest (the key is loaded by the caller,
    before anything is built or pushed)."""
    from lockbuild.audit.sbom import sbom_json
    from lockbuild.fetch.cache import Cache
    from lockbuild.sign.release import sign_image, statements

    with _store(ref, lf.lock, push=True) as store:
        digest = store.image()["digest"]
        if run_verify and verify_report is None:
            verify_report = _verify_before_signing(ref, digest, _pinned(store), lf)
        sts = None
        if attest:
            sbom = sbom_json(lf.lock, lf.digest, image_digest=digest, cache=Cache()).encode()
            spec_file_ = spec_file(spec) if spec is not None else lf.path.parent / "lockbuild.toml"
            spec_input = (spec_file_.name, spec_file_.read_bytes()) if spec_file_.is_file() else None
            sts = statements(lf.lock, lf.data, digest, sbom=sbom, verify=verify_report, smoke=smoke_report,
                             built=built, spec=spec_input)
        result = sign_image(store, signer, statements_=sts, signature=signature)
    return result.to_dict()


def _verify_before_signing(ref: str, digest: str, pinned: str, lf: LockFile) -> dict[str, Any]:
    from lockbuild.fetch.cache import Cache
    from lockbuild.verify.verify import verify_image

    with err.status(f"verifying {digest[:19]} against the lock before signing…"):
        report = verify_image(pinned, lf, Cache(), tracking_uri=tracking_uri(lf))
    if not report.ok:
        raise VerifyFailed(f"{len(report.findings)} mismatch(es) between {ref} and the image {lf.path} "
                           "determines: refusing to sign", hint="run `lockbuild verify` for the findings; "
                           "sign only the image this lock determines")
    return report.to_dict()  # type: ignore[no-any-return]


def sign(
    image_ref: Annotated[str, typer.Argument(metavar="REF", help="docker://HOST/REPO@sha256:…, HOST/REPO:TAG, "
                                             "or an OCI layout directory")],
    key: Annotated[Path, typer.Option("--key", "-k", help="PEM private key (ECDSA P-256; PKCS#8, SEC1 or "
                                      "cosign-encrypted)")],
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    passphrase_env: PassEnvOpt = "LOCKBUILD_KEY_PASSWORD",
    verify_report: Annotated[Path | None, typer.Option("--verify-report", help="`lockbuild verify --json` output "
                                                       "to attest instead of verifying again")] = None,
    smoke_report: Annotated[Path | None, typer.Option("--smoke-report", help="`lockbuild smoke --json` output to "
                                                      "attest")] = None,
    run_verify: Annotated[bool, typer.Option("--verify/--no-verify", help="prove the image against the lock "
                                             "before signing (default; skipped with --verify-report)")] = True,
    attest: Annotated[bool, typer.Option("--attest/--no-attest", help="attach the signed provenance, SBOM "
                                         "and verification attestations")] = True,
    attest_only: Annotated[bool, typer.Option("--attest-only", help="attach attestations, no image "
                                              "signature")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Sign an image in cosign's format and attach signed attestations (provenance, SBOM, verification).

    The signature goes under the `sha256-<hex>.sig` tag; the in-toto attestations (DSSE: SLSA
    provenance, CycloneDX SBOM, lockbuild verification) under the `.att` tag and as OCI referrers.
    By default the image is first proven against the lock: only the lock's image is signed.
    The key's passphrase is read from $LOCKBUILD_KEY_PASSWORD (or --passphrase-env VAR).

    Example: [bold]lockbuild sign docker://myacr.azurecr.io/churn@sha256:… --key release.key[/]
    """
    from lockbuild.sign.keys import load_private_key

    if attest_only and not attest:
        raise LockbuildError("--attest-only and --no-attest leave nothing to do", hint="drop one of them")
    lf = read_lock_file(spec, lock_file)
    vrep, srep = _load_json(verify_report, "verify report"), _load_json(smoke_report, "smoke report")
    signer = load_private_key(key, passphrase_env)
    summary = run_sign(image_ref, signer, lf, verify_report=vrep, smoke_report=srep,
                       run_verify=run_verify, built=False, attest=attest, signature=not attest_only, spec=spec)
    if as_json:
        emit_json(summary)
    else:
        for w in summary["warnings"]:
            err.print(f"[yellow]warning[/] {w}")
        what = [x for x in (summary["signature_tag"], summary["attestation_tag"]) if x]
        err.print(f"[green]signed[/] {summary['repository']}@{summary['digest']} with key "
                  f"{summary['key_id'][:16]}…: {', '.join(what)}")


def verify_key_step(image_ref: str, key: Path, lf: LockFile) -> tuple[str, dict[str, Any]]:
    """`verify --key`: signature and attestations first (exit 32-35 when they fail). Returns what the
    lock-derived verify must read (a registry image pinned to the signed digest) and a summary."""
    from lockbuild.sign.keys import load_public_key
    from lockbuild.sign.release import verify_release

    verifier = load_public_key(key)
    with _store(image_ref, lf.lock, push=False) as store:
        release = verify_release(store, verifier, lf.digest)
        pinned = _pinned(store)
    return pinned, release.to_dict()


def register(app: typer.Typer) -> None:
    app.command()(keygen)
    app.command()(sign)
