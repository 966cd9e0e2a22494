"""`lockbuild image`: build from the lock alone, then hand the image to the publishers asked for
(lockbuild/publish/: OCI layout, docker-archive, engine, registry)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from lockbuild.cli.common import (
    JsonOpt,
    LockOpt,
    SpecOpt,
    emit_json,
    err,
    out,
    progress_reporter,
    read_lock_file,
    tracking_uri,
)

if TYPE_CHECKING:  # the publishers are imported where used: they load httpx, every command's start-up would pay
    from lockbuild.lockfile.io import LockFile
    from lockbuild.publish import Attachment


def _attachments(lf: LockFile, image_digest: str, cache: Any, *, sbom: bool, provenance: bool) -> list[Attachment]:
    """The SBOM / provenance to attach to the image (as OCI referrers, where the output has a place)."""
    from lockbuild.audit.attach import PROVENANCE_TYPE, SBOM_TYPE
    from lockbuild.publish import Attachment

    out: list[Attachment] = []
    if sbom:
        from lockbuild.audit.sbom import sbom_json

        out.append(Attachment(SBOM_TYPE, sbom_json(lf.lock, lf.digest, image_digest=image_digest,
                                                   cache=cache).encode()))
    if provenance:
        from lockbuild.audit.provenance import render, statement

        out.append(Attachment(PROVENANCE_TYPE, render(statement(lf.lock, lf.digest, image_digest)).encode()))
    return out


OciOpt = Annotated[Path | None, typer.Option("--oci", help="write an OCI image layout directory")]
ArchiveOpt = Annotated[Path | None, typer.Option("--docker-archive", help="write a `docker load` tarball")]
LoadOpt = Annotated[bool, typer.Option("--load", help="load into the running Docker engine")]
PushOpt = Annotated[str | None, typer.Option("--push", help="push to REGISTRY/REPO[:TAG]")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="tag for --load / archive (default: name:lock)")]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", help="parallel downloads")]
CompressionOpt = Annotated[str | None, typer.Option(
    "--compression", help="gzip|zstd layers for --oci/--push (default: the lock's \\[image] compression)")]
SbomOpt = Annotated[bool, typer.Option("--sbom", help="attach a CycloneDX SBOM (OCI layout and push)")]
ProvenanceOpt = Annotated[bool, typer.Option("--provenance", help="attach SLSA provenance")]
SignOpt = Annotated[bool, typer.Option("--sign", help="after --push, sign the pushed digest and attach signed "
                                       "attestations (`lockbuild sign`); needs --key")]
KeyOpt = Annotated[Path | None, typer.Option("--key", "-k", help="private key for --sign (passphrase in "
                                             "$LOCKBUILD_KEY_PASSWORD)")]
CacheRegistryOpt = Annotated[str | None, typer.Option(
    "--cache-registry", envvar="LOCKBUILD_CACHE_REGISTRY", show_envvar=False,
    help="HOST/REPO used as a shared layer cache (env LOCKBUILD_CACHE_REGISTRY)")]
CacheKeyOpt = Annotated[Path | None, typer.Option(
    "--cache-key", envvar="LOCKBUILD_CACHE_KEY", show_envvar=False,
    help="PEM P-256 private key signing what this build pushes to the shared cache (env LOCKBUILD_CACHE_KEY)")]
CacheTrustOpt = Annotated[list[Path] | None, typer.Option(
    "--cache-trust", help="PEM public key whose shared-cache entries are used (repeatable; env "
    "LOCKBUILD_CACHE_TRUST, comma-separated)")]


def image(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    oci: OciOpt = None,
    archive: ArchiveOpt = None,
    load: LoadOpt = False,
    push: PushOpt = None,
    tag: TagOpt = None,
    jobs: JobsOpt = 4,
    compression: CompressionOpt = None,
    attach_sbom: SbomOpt = False,
    attach_provenance: ProvenanceOpt = False,
    sign: SignOpt = False,
    key: KeyOpt = None,
    cache_registry: CacheRegistryOpt = None,
    cache_key: CacheKeyOpt = None,
    cache_trust: CacheTrustOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the image from the lock alone (no daemon, no resolution); print its digest.

    Example: [bold]lockbuild image --oci out/oci --docker-archive out/image.tar --load[/]

    Shared cache: [bold]lockbuild image --push reg/app:v1 --cache-registry reg/lockbuild-cache
    --cache-key ci.pem --cache-trust ci.pub.pem[/]
    """
    from lockbuild.assemble.build import build_outputs
    from lockbuild.fetch.cache import Cache

    signer = _release_signer(sign, key, push)  # before building or pushing: a bad key or passphrase pushes nothing
    lf = read_lock_file(spec, lock_file)
    if oci is None and archive is None and not load and push is None:
        oci = lf.dir / "out" / "oci"
    cache = Cache()
    progress, report = progress_reporter(not as_json and err.is_terminal)
    warnings: list[str] = []  # in --json mode too: a skipped step must never be silent
    if as_json:
        report = _collect_warnings(warnings)
    shared = _shared_cache(cache_registry, cache_key, cache_trust, report=report)
    if shared is not None and push is not None and oci is None and archive is None and not load:
        from lockbuild.oci.registry import parse_reference

        # the image goes only to the shared cache's registry: its shared layers need not come here
        shared.lazy = parse_reference(push).registry == shared.ref.registry
    with progress:
        built = build_outputs(lf.lock, lf.data, cache, compression=compression, oci_or_push=oci is not None or
                              push is not None, archive_or_load=archive is not None or load, lock_dir=lf.dir,
                              jobs=jobs, report=report, shared=shared, tracking_uri=tracking_uri(lf))
    repo_tag = tag or f"{lf.lock.image_name}:{lf.lock.inputs_digest.split(':')[1][:12]}"
    outputs = _publish(built, lf, cache, oci=oci, push=push, archive=archive, load=load, repo_tag=repo_tag,
                       shared=shared, sbom=attach_sbom, provenance=attach_provenance)
    if signer is not None and push is not None:
        from lockbuild.cli.sign import run_sign
        from lockbuild.oci.registry import parse_reference

        ref = parse_reference(push).with_digest(built.result.image.manifest_digest)
        outputs["signed"] = run_sign(ref, signer, lf, verify_report=None, smoke_report=None, run_verify=False,
                                     built=True, spec=spec)
    _render(built.result, outputs, shared, warnings, lf, as_json=as_json)


def _collect_warnings(warnings: list[str]) -> Any:
    def report(event: str, data: dict) -> None:
        if event == "warning":
            warnings.append(str(data.get("message", "")))

    return report


def _release_signer(sign: bool, key: Path | None, push: str | None) -> Any:
    """The --sign key, loaded before anything is built or pushed."""
    if not (sign or key is not None):
        return None
    from lockbuild.errors import SigningKeyError
    from lockbuild.sign.keys import load_private_key

    if not (sign and key is not None and push is not None):
        raise SigningKeyError("--sign needs --push REF and --key KEY (and --key needs --sign)",
                              hint="e.g. lockbuild image --push HOST/REPO:TAG --sign --key release.key")
    return load_private_key(key)


def _publish(built: Any, lf: LockFile, cache: Any, *, oci: Path | None, push: str | None, archive: Path | None,
             load: bool, repo_tag: str, shared: Any, sbom: bool, provenance: bool) -> dict[str, Any]:
    """Each output is a publisher (lockbuild/publish/); docker-archive and --load take the gzip image."""
    from lockbuild.publish import publish_all
    from lockbuild.publish.archive import ArchivePublisher
    from lockbuild.publish.engine import EnginePublisher
    from lockbuild.publish.layout import LayoutPublisher
    from lockbuild.publish.registry import RegistryPublisher

    img = built.result.image
    outputs: dict[str, Any] = {}
    if oci is not None or push is not None:
        attachments = _attachments(lf, img.manifest_digest, cache, sbom=sbom, provenance=provenance)
        outputs.update(publish_all(
            [*([LayoutPublisher(oci, ref_name=repo_tag.rsplit(":", 1)[1])] if oci is not None else []),
             *([RegistryPublisher(push, mount_from=shared.mount_source(push) if shared else None)]
               if push is not None else [])],
            img, cache, attachments))
    if built.gzip is not None:
        if built.compression != "gzip":
            outputs["gzip_digest"] = built.gzip.manifest_digest
        outputs.update(publish_all(
            [*([ArchivePublisher(archive, repo_tag)] if archive is not None else []),
             *([EnginePublisher(repo_tag)] if load else [])],
            built.gzip, cache))
    return outputs


def _render(result: Any, outputs: dict[str, Any], shared: Any, warnings: list[str], lf: LockFile, *,
            as_json: bool) -> None:
    size = sum(layer.size for _, layer, _ in result.layers)
    img = result.image
    summary = {
        "digest": img.manifest_digest, "config_digest": img.config_digest, "compressed_bytes": size,
        "layers": [{"name": p.name, "digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                    "reused": reused, **(result.stats or {}).get(p.name, {})} for p, layer, reused in result.layers],
        **outputs,
    }
    if shared is not None:
        shared.close()
        summary["shared_cache"] = {"registry": shared.name, **shared.stats.to_dict()}
    if warnings:
        summary["warnings"] = sorted(set(warnings))
    if as_json:
        emit_json(summary)
        return
    for k, v in outputs.items():
        if k == "signed":
            err.print(f"  signed: {v['signature_tag']} + {len(v['attestations'])} attestation(s) "
                      f"({v['attestation_tag']}), key {v['key_id'][:16]}…")
        else:
            err.print(f"  {k}: {v}")
    _print_layer_sizes(err, result)
    err.print(f"[green]image[/] {lf.lock.image_name} {size / 1e6:.1f} MB compressed, {len(result.layers)} layers")
    out.print(img.manifest_digest)


def _shared_cache(registry: str | None, key: Path | None, trust: list[Path] | None, *,
                  report: Any) -> Any:
    """The shared layer cache asked for by --cache-registry/--cache-key/--cache-trust (or their env)."""
    import os

    if not registry:
        return None
    from lockbuild.share.remote import SharedCache
    from lockbuild.sign.keys import load_private_key, load_public_key

    trust_paths = list(trust or []) or [Path(p.strip()) for p in os.environ.get("LOCKBUILD_CACHE_TRUST", "").split(",")
                                       if p.strip()]
    signer = load_private_key(key) if key is not None else None
    return SharedCache(registry, signer=signer, trusted=[load_public_key(p) for p in trust_paths], report=report)


def _print_layer_sizes(err: Console, result: Any) -> None:
    """Per layer: unpacked MB before -> after the lock's [build] rules (pruned files, .pyc added), compressed MB."""
    mb = 1e6
    for p, layer, reused in result.layers:
        st = (result.stats or {}).get(p.name) or {}
        line = f"  {p.name:<24}"
        if st:
            line += f" unpacked {st['before_bytes'] / mb:7.1f} -> {st['unpacked_bytes'] / mb:7.1f} MB"
            if st["pruned_files"]:
                line += f", pruned {st['pruned_files']} files {st['pruned_bytes'] / mb:.1f} MB"
            if st["pyc_files"]:
                line += f", +{st['pyc_files']} .pyc {st['pyc_bytes'] / mb:.1f} MB"
        codec = "zstd" if layer.media_type.endswith("+zstd") else "gzip"
        err.print(f"{line}; {layer.size / mb:.1f} MB {codec}{' (cached)' if reused else ''}")


def register(app: typer.Typer) -> None:
    app.command()(image)
