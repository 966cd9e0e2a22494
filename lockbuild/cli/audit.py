"""Audit commands: sbom, provenance, diff, k8s. ``register(app)`` adds them to lockbuild's CLI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lockbuild.cli.common import JsonOpt, LockOpt, SpecOpt, emit_json, err, lock_path, out, spec_file
from lockbuild.errors import LockbuildError

DigestOpt = Annotated[str | None, typer.Option("--image-digest", help="image manifest digest sha256:…")]
LayoutOpt = Annotated[Path | None, typer.Option("--image", help="OCI layout dir to read the image digest from")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="file to write ('-': stdout)")]


# -- helpers -----------------------------------------------------------------------------------------


def _image_digest(digest: str | None, layout: Path | None) -> str | None:
    """--image-digest, or the digest of the one image in the --image OCI layout, or None."""
    from lockbuild.audit import normalize_digest

    if digest and layout:
        raise LockbuildError("pass either --image-digest or --image, not both",
                             hint="--image reads the digest from an OCI layout written by `lockbuild image --oci`")
    if digest:
        return normalize_digest(digest)
    if layout:
        from lockbuild.audit.attach import layout_image_descriptor

        return str(layout_image_descriptor(layout)["digest"])
    return None


def _check_output(output: Path, as_json: bool) -> None:
    if str(output) == "-" and as_json:
        raise LockbuildError("-o - and --json both write to stdout", hint="write the document to a file with -o FILE")


def _write(output: Path, text: str) -> str:
    """Write atomically (or to stdout for '-'); returns where it went."""
    if str(output) == "-":
        sys.stdout.write(text)
        return "-"
    from lockbuild.fsutil import atomic_write_text

    atomic_write_text(output, text)
    return str(output)


def _report(as_json: bool, summary: dict[str, Any], line: str) -> None:
    if as_json:
        emit_json(summary)
    else:
        err.print(line)


# -- commands ----------------------------------------------------------------------------------------


def sbom(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    output: OutputOpt = Path("sbom.cdx.json"),
    image_digest: DigestOpt = None,
    image: LayoutOpt = None,
    licenses: Annotated[bool, typer.Option("--licenses/--no-licenses",
                                           help="declare wheel licenses read from cached wheels")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Write a CycloneDX 1.6 JSON SBOM of the image: every .deb, wheel, the interpreter and the model.

    Deterministic (serial number and timestamp come from the lock). Schema-validated before writing.

    Example: [bold]lockbuild sbom --image out/oci -o sbom.cdx.json[/]
    """
    from lockbuild.audit import read_locked
    from lockbuild.audit import sbom as sbom_mod
    from lockbuild.fetch.cache import Cache

    _check_output(output, as_json)
    locked = read_locked(lock_path(spec, lock_file))
    digest = _image_digest(image_digest, image)
    text = sbom_mod.sbom_json(locked.lock, locked.digest, image_digest=digest, cache=Cache() if licenses else None)
    problem = sbom_mod.validate(text)
    if problem:
        raise LockbuildError(f"the SBOM does not match the CycloneDX schema: {problem.splitlines()[0]}",
                             hint="this is a lockbuild bug: please report it with the lock")
    where = _write(output, text)
    lk = locked.lock
    components = len(lk.debian.packages) + len(lk.python.packages) + 1
    _report(as_json, {"sbom": where, "format": "CycloneDX", "spec_version": sbom_mod.SCHEMA_VERSION.to_version(),
                      "components": components, "image_digest": digest, "lock_digest": locked.digest},
            f"[green]wrote[/] {where}: CycloneDX {sbom_mod.SCHEMA_VERSION.to_version()}, {components} components"
            + (f", image {digest}" if digest else " (no image digest: pass --image or --image-digest)"))


def provenance(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    output: OutputOpt = Path("provenance.intoto.json"),
    image_digest: DigestOpt = None,
    image: LayoutOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="subject name (default: the lock's image name)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write SLSA v1 provenance (an unsigned in-toto Statement v1) for the image digest.

    Example: [bold]lockbuild provenance --image out/oci -o provenance.intoto.json[/]
    """
    from lockbuild.audit import provenance as prov
    from lockbuild.audit import read_locked

    _check_output(output, as_json)
    lpath = lock_path(spec, lock_file)
    locked = read_locked(lpath)
    digest = _image_digest(image_digest, image)
    if digest is None:
        raise LockbuildError("provenance needs the image digest it describes",
                             hint="pass --image out/oci (an OCI layout) or --image-digest sha256:…")
    base = lpath.resolve().parent
    doc = prov.statement(locked.lock, locked.digest, digest, spec_name=prov.relative_name(spec_file(spec), base),
                         lock_name=prov.relative_name(lpath, base), image_name=name)
    where = _write(output, prov.render(doc))
    deps = len(doc["predicate"]["buildDefinition"]["resolvedDependencies"])
    _report(as_json, {"provenance": where, "predicate_type": prov.PREDICATE_TYPE, "subject": doc["subject"],
                      "resolved_dependencies": deps, "lock_digest": locked.digest},
            f"[green]wrote[/] {where}: SLSA provenance v1 for {digest}, {deps} resolved dependencies (unsigned)")


def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD.lock", help="the lock before")],
    new: Annotated[Path, typer.Argument(metavar="NEW.lock", help="the lock after")],
    as_json: JsonOpt = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="a Markdown PR comment on stdout")] = False,
) -> None:
    """Compare two locks: interpreter, platform, Debian and Python packages, model, runtime.

    Exit status like diff(1): 0 no changes, 1 changes, other codes for errors (8: unreadable lock).

    Example: [bold]lockbuild diff <(git show main:lockbuild.lock) lockbuild.lock --markdown[/]
    """
    from lockbuild.audit import diff as diff_mod
    if as_json and as_markdown:
        raise LockbuildError("--json and --markdown are exclusive", hint="pick one output format")
    a, b = diff_mod.load_pair(old, new)
    result = diff_mod.diff_locks(a, b, str(old), str(new))
    if as_json:
        emit_json(result.to_dict())
    elif as_markdown:
        sys.stdout.write(diff_mod.markdown(result))
    elif result.changed:
        out.print(diff_mod.rich_table(result))
        out.print(diff_mod.summary_line(result))
    else:
        out.print("no changes")
    if result.changed:
        raise typer.Exit(1)


ImageRefOpt = Annotated[str | None, typer.Option("--image", help="REPO@sha256:… to deploy (pinned by digest)")]
ImageDigestOpt = Annotated[str | None, typer.Option("--image-digest",
                                                    help="digest; the repository is the lock's image name")]
SignedByOpt = Annotated[Path | None, typer.Option("--signed-by", metavar="PUB", help="also write admission "
                                                  "policy requiring signatures by this public key")]
PolicyDirOpt = Annotated[Path | None, typer.Option("--policy-dir", help="where --signed-by writes policy.json, "
                                                   "registries.d/ and ratify.yaml (default: beside -o)")]
OthersOpt = Annotated[str, typer.Option("--others", help="policy.json for every other image: reject or accept")]
BuildJobOpt = Annotated[bool, typer.Option("--build-job", help="write the Job that BUILDS the image instead "
                                           "(unprivileged: uid 65532, read-only root, no capabilities)")]
BuilderImageOpt = Annotated[str | None, typer.Option("--builder-image", help="--build-job: the builder image "
                                                     "REPO@sha256:… (scripts/builder-image.sh)")]
PushOpt = Annotated[str | None, typer.Option("--push", help="--build-job: REGISTRY/REPO:TAG to push to")]
RegistrySecretOpt = Annotated[str, typer.Option("--registry-secret", help="--build-job: dockerconfigjson "
                                                "Secret with the registry credentials")]
CacheRegistryOpt = Annotated[str | None, typer.Option("--cache-registry", help="--build-job: shared layer "
                                                      "cache HOST/REPO")]
CacheKeySecretOpt = Annotated[str | None, typer.Option("--cache-key-secret", help="--build-job: Secret whose "
                                                       "cache.pem signs pushed cache entries")]
CacheTrustOpt = Annotated[list[Path] | None, typer.Option("--cache-trust", help="--build-job: trusted public "
                                                          "key (repeatable), put in the Job's ConfigMap")]


def k8s(
    spec: SpecOpt = Path("lockbuild.toml"), lock_file: LockOpt = None, output: OutputOpt = Path("deploy.yaml"),
    image: ImageRefOpt = None, image_digest: ImageDigestOpt = None, signed_by: SignedByOpt = None,
    policy_dir: PolicyDirOpt = None, unsigned_elsewhere: OthersOpt = "reject", build_job: BuildJobOpt = False,
    builder_image: BuilderImageOpt = None, push: PushOpt = None, registry_secret: RegistrySecretOpt = "registry-push",
    cache_registry: CacheRegistryOpt = None, cache_key_secret: CacheKeySecretOpt = None,
    cache_trust: CacheTrustOpt = None, as_json: JsonOpt = False,
) -> None:
    """Write a Kubernetes Deployment + Service (AKS-ready, non-root, read-only root) pinned by digest.

    Resources come from \\[deploy] in lockbuild.toml; MLFLOW_MODELS_WORKERS follows the CPU limit.
    With --signed-by PUB, also the admission policy that enforces `lockbuild sign`'s signature:
    containers policy.json + registries.d (CRI-O/podman nodes) and Ratify/Gatekeeper manifests (AKS).
    With --build-job: the ConfigMap + Job that builds and pushes the image in the cluster instead.

    Example: [bold]lockbuild k8s --image myacr.azurecr.io/churn@sha256:… -o deploy.yaml --signed-by release.pub[/]

    Build Job: [bold]lockbuild k8s --build-job --builder-image myacr.azurecr.io/lockbuild-builder@sha256:…
    --push myacr.azurecr.io/churn:v1 --cache-registry myacr.azurecr.io/lockbuild-cache
    --cache-key-secret cache-key --cache-trust ci.pub.pem -o build-job.yaml[/]
    """
    _check_output(output, as_json)
    if build_job:
        _build_job(spec, lock_file, output, builder_image, push, registry_secret, cache_registry, cache_key_secret,
                   cache_trust or [], as_json)
        return
    if (image is None) == (image_digest is None):
        raise LockbuildError("pass exactly one of --image REPO@sha256:… or --image-digest sha256:…",
                             hint="Kubernetes must pull the exact image that was verified: pin it by digest")
    _deploy(spec, lock_file, output, image, image_digest, signed_by, policy_dir, unsigned_elsewhere, as_json)


def _deploy(spec: Path, lock_file: Path | None, output: Path, image: str | None, image_digest: str | None,
            signed_by: Path | None, policy_dir: Path | None, unsigned_elsewhere: str, as_json: bool) -> None:
    """`k8s`: the Deployment + Service for the image, and the admission policy with --signed-by."""
    from lockbuild.audit import k8s as k8s_mod
    from lockbuild.audit import normalize_digest, read_locked
    from lockbuild.spec import load_spec

    s = load_spec(spec)
    locked = read_locked(lock_path(s.path, lock_file))
    ref = image if image is not None else f"{locked.lock.image_name}@{normalize_digest(str(image_digest))}"
    docs = k8s_mod.manifests(locked.lock, locked.digest, ref, s.deploy)
    verifier = _policy_key(signed_by, unsigned_elsewhere) if signed_by is not None else None  # before any write
    where = _write(output, k8s_mod.render(docs))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    workers = next(e["value"] for e in container["env"] if e["name"] == "MLFLOW_MODELS_WORKERS")
    objects = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
    summary = {"output": where, "image": container["image"], "objects": objects, "workers": int(workers),
               "resources": container["resources"], "lock_digest": locked.digest}
    if verifier is not None:
        base = policy_dir or (Path(".") if str(output) == "-" else output.parent) / "policy"
        summary["policy"] = _write_policy(base, verifier, container["image"], s.deploy, unsigned_elsewhere)
    _report(as_json, summary,
            f"[green]wrote[/] {where}: {', '.join(objects)}, image {container['image']}, {workers} worker(s)"
            + (f"; admission policy in {summary['policy']['dir']}" if signed_by is not None else ""))


def _policy_key(public_key: Path, others: str) -> Any:
    from lockbuild.sign.keys import load_public_key

    if others not in ("reject", "accept"):
        raise LockbuildError(f"--others {others!r} is not reject or accept",
                             hint="reject: only signed images run (the default); accept: other images unchecked")
    return load_public_key(public_key)


def _write_policy(base: Path, verifier: Any, image: str, deploy: Any, others: str) -> dict[str, Any]:
    """policy.json, registries.d/lockbuild.yaml and ratify.yaml for the image's repository and the key."""
    from lockbuild.fsutil import atomic_write_text
    from lockbuild.sign import policy

    pem = verifier.public_pem()
    repo = image.split("@", 1)[0]
    namespace = (deploy or {}).get("namespace")
    name = "lockbuild-" + repo.rsplit("/", 1)[-1].replace("_", "-").replace(".", "-")[:40]
    files = {
        "policy.json": policy.render_json(policy.containers_policy([repo], pem, others=others)),
        "registries.d/lockbuild.yaml": policy.render_yaml([policy.registries_d([repo])],
                                                          "registries.d: sigstore signatures as attachments"),
        "ratify.yaml": policy.render_yaml(policy.ratify_manifests([repo], pem, name=name,
                                                                  namespaces=[namespace] if namespace else []),
                                          f"Ratify + Gatekeeper: pods of {repo} need a signature by key "
                                          f"{verifier.key_id[:16]}… (generated by lockbuild)"),
    }
    for rel, text in files.items():
        atomic_write_text(base / rel, text)
    return {"dir": str(base), "files": sorted(files), "repository": repo, "key_id": verifier.key_id}


def _build_job(spec: Path, lock_file: Path | None, output: Path, builder_image: str | None, push: str | None,
               registry_secret: str, cache_registry: str | None, cache_key_secret: str | None,
               cache_trust: list[Path], as_json: bool) -> None:
    from lockbuild.audit import k8s as k8s_mod
    from lockbuild.audit import read_locked
    from lockbuild.oci.registry import parse_reference
    from lockbuild.sign.keys import load_public_key

    if not builder_image or not push:
        raise LockbuildError("--build-job needs --builder-image REPO@sha256:… and --push REGISTRY/REPO:TAG",
                             hint="build the builder image with scripts/builder-image.sh and push it by digest")
    parse_reference(push)
    if cache_registry:
        parse_reference(cache_registry)
    elif cache_key_secret or cache_trust:
        raise LockbuildError("--cache-key-secret/--cache-trust need --cache-registry HOST/REPO",
                             hint="name the shared cache repository")
    path = lock_path(spec, lock_file)
    locked = read_locked(path)
    trust = {}
    for p in cache_trust:
        load_public_key(p)  # a readable P-256 public key, or a clear error
        trust[str(p)] = p.read_text()
    docs = k8s_mod.build_job(locked.lock, locked.digest, path.read_text(), builder_image=builder_image, push=push,
                             registry_secret=registry_secret, cache_registry=cache_registry,
                             cache_key_secret=cache_key_secret, trust_keys=trust)
    where = _write(output, k8s_mod.render(docs))
    objects = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
    _report(as_json, {"output": where, "objects": objects, "builder_image": builder_image, "push": push,
                      "lock_digest": locked.digest},
            f"[green]wrote[/] {where}: {', '.join(objects)}, builds {push} with {builder_image}")


def register(app: typer.Typer) -> None:
    """Add the audit commands to lockbuild's CLI."""
    for command in (sbom, provenance, diff, k8s):
        app.command()(command)
