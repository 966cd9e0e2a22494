"""Command line: parse, call one stage function, render (rich on stderr, --json on stdout).

Only this module knows about terminals and exit codes; stages raise LockbuildError.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from lockbuild import __version__
from lockbuild.errors import DoctorFailed, LockbuildError, StaleLock

app = typer.Typer(
    name="lockbuild",
    help="Turn an MLflow model into a locked, bit-for-bit reproducible OCI image, and prove it serves.\n\n"
    "Daily use:  lockbuild lock && lockbuild image",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
export_app = typer.Typer(help="Export parts of the lock in other formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="lockbuild.toml (or its directory)")]
LockOpt = Annotated[Path | None, typer.Option("--lock", "-l", help="lockbuild.lock (default: beside the spec)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable result on stdout")]


_emitted = False


def emit_json(obj: Any) -> None:
    """One JSON document per run on stdout (a failing command's report already says why)."""
    global _emitted
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    _emitted = True


def _lock_path(spec_path: Path, lock: Path | None) -> Path:
    if lock is not None:
        return lock
    base = spec_path if spec_path.is_dir() else spec_path.parent
    return base / "lockbuild.lock"


@app.command()
def init(
    model: Annotated[str, typer.Option("--model", "-m", help="dir, runs:/…, models:/name/ver, models:/name@alias")],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking server")] = None,
    spec: SpecOpt = Path("lockbuild.toml"),
    name: Annotated[str | None, typer.Option(help="image name")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing spec")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write lockbuild.toml from the model's own metadata.

    Example: [bold]lockbuild init --model models:/churn@champion --tracking-uri http://127.0.0.1:5000[/]
    """
    from lockbuild.errors import SpecError
    from lockbuild.fsutil import atomic_write_text
    from lockbuild.model.intake import fetch_model
    from lockbuild.model.metadata import read_model
    from lockbuild.spec import parse_spec, render_spec

    path = spec / "lockbuild.toml" if spec.is_dir() else spec
    if path.exists() and not force:
        raise SpecError(f"{path} already exists", hint="pass --force to overwrite it")
    source = fetch_model(model, tracking_uri=tracking_uri, base_dir=path.resolve().parent)
    try:
        info = read_model(source.path)
    finally:
        source.cleanup()
    from packaging.version import Version

    v = Version(info.python_version) if info.python_version else None
    text = render_spec(model, tracking_uri=tracking_uri, python=f"{v.major}.{v.minor}" if v else None, name=name)
    parse_spec(text, path.resolve())  # what we write must load
    atomic_write_text(path, text)
    if as_json:
        emit_json({"spec": str(path), "model": model, "python": info.python_version,
                   "mlflow_version": info.mlflow_version, "flavors": list(info.flavors)})
    else:
        err.print(f"[green]wrote[/] {path}: model {model} (MLflow {info.mlflow_version}, "
                  f"Python {info.python_version}, flavors {', '.join(info.flavors)})")


@app.command()
def lock(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 with the reason if the lock is stale")] = False,
    upgrade: Annotated[bool, typer.Option("--upgrade", help="re-resolve everything (Python and Debian)")] = False,
    rederive: Annotated[bool, typer.Option(
        "--rederive", help="with --check: audit the lock by re-deriving it from the spec and model at its "
        "recorded cutoff and Debian InRelease files; exit 17 naming every field that differs")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Resolve and pin everything the image needs into lockbuild.lock.

    Example: [bold]lockbuild lock[/]   ·   CI: [bold]lockbuild lock --check[/]   ·   audit:
    [bold]lockbuild lock --check --rederive[/]
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.create import explain_stale, make_lock
    from lockbuild.lock.io import dumps, read_lock, write_lock
    from lockbuild.spec import load_spec

    s = load_spec(spec)
    path = _lock_path(s.path, lock_file)
    if rederive and not check:
        from lockbuild.errors import SpecError

        raise SpecError("--rederive audits an existing lock and writes nothing: use it with --check",
                        hint="run `lockbuild lock --check --rederive`")
    if check:
        current = read_lock(path, verify_content=False)  # a hand edit is reported below as a reason
        reasons = explain_stale(s, current)
        from lockbuild.verify.doctor import doctor as run_doctor

        reasons += [f"doctor error [{f.rule}]: {f.what} (fix: {f.fix})"
                    for f in run_doctor(current, None) if f.severity == "error"]
        text = path.read_text(encoding="utf-8")
        if dumps(current) != text:
            reasons.append(f"{path.name} was edited by hand (it does not render back to the same bytes)")
        if rederive and not reasons:
            _rederive_check(s, current, path, as_json)
            return
        if as_json:
            emit_json({"lock": str(path), "fresh": not reasons, "reasons": reasons})
        if reasons:
            raise StaleLock(f"{path} is stale:\n  - " + "\n  - ".join(reasons),
                            hint="run `lockbuild lock` and commit the result")
        if not as_json:
            err.print(f"[green]fresh[/] {path} ({current.inputs_digest})")
        return
    previous = None
    if path.exists():
        try:
            previous = read_lock(path)
        except LockbuildError as e:
            if not upgrade:  # re-resolving now would silently move the cutoff and the Debian side
                from lockbuild.errors import LockFileError

                raise LockFileError(
                    f"the existing lock cannot be used: {e.message}", where=e.where or str(path),
                    hint="nothing was written. `lockbuild lock --upgrade` re-resolves everything at today's "
                    f"date (new cutoff, new Debian state); or restore {path.name} from version control",
                ) from None
            err.print(f"[yellow]note[/] --upgrade: replacing the unreadable lock ({escape(e.message)})")
    with err.status("locking…") as status:
        result = make_lock(s, previous=previous, upgrade=upgrade, cache=Cache(),
                           notify=lambda m: status.update(m))
    for note in result.notes:
        err.print(f"[yellow]note[/] {escape(note)}")
    from lockbuild.verify.doctor import doctor as run_doctor

    findings = run_doctor(result.lock, None)
    for f in findings:
        err.print(f"[yellow]doctor {f.severity}[/] [{f.rule}] {escape(f.what)}; fix: {escape(f.fix)}")
    errors = [f for f in findings if f.severity == "error"]
    if errors:  # a lock that `lock` writes must build and serve: nothing is written
        raise DoctorFailed(f"the lock would not serve; {path} was not written: "
                           + "; ".join(f"[{f.rule}] {f.what}" for f in errors),
                           hint=errors[0].fix)
    changed = write_lock(result.lock, path)
    lk = result.lock
    summary = {
        "lock": str(path), "changed": changed, "reused": result.reused, "inputs_digest": lk.inputs_digest,
        "python": lk.target.python, "base": lk.target.base, "wheel_platform": lk.target.wheel_platform,
        "python_packages": len(lk.python.packages), "debian_packages": len(lk.debian.packages),
        "model": lk.model.resolved_uri, "notes": result.notes,
        "variants": [{"dropped": c.dropped, "kept": c.kept, "reason": c.reason, "paths": c.paths,
                      "example": c.example} for c in lk.python.variants],
        "doctor": [f.to_dict() for f in findings],
    }
    if result.reused:
        for c in lk.python.variants:
            err.print(f"[yellow]note[/] variant: {c.kept} kept, {c.dropped} dropped ({escape(c.reason)})")
    if as_json:
        emit_json(summary)
    else:
        state = "unchanged" if not changed else "written"
        err.print(f"[green]{state}[/] {path}: Python {lk.target.python} on {lk.target.base} "
                  f"({len(lk.debian.packages)} .debs), {len(lk.python.packages)} wheels for "
                  f"{lk.target.wheel_platform}, model {lk.model.resolved_uri}")


def _rederive_check(s: Any, current: Any, path: Path, as_json: bool) -> None:
    """`lock --check --rederive`: derive the lock again at its pins and compare field by field."""
    from lockbuild.errors import LockMismatch
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.audit import rederive as audit

    with err.status("re-deriving the lock…") as status:
        diffs = audit(s, current, Cache(), notify=lambda m: status.update(escape(m)))
    if as_json:
        emit_json({"lock": str(path), "fresh": True, "rederived": True, "genuine": not diffs,
                   "differences": [d.to_dict() for d in diffs]})
    if diffs:
        shown = [str(d) for d in diffs[:20]] + ([f"… and {len(diffs) - 20} more"] if len(diffs) > 20 else [])
        raise LockMismatch(
            f"{path} does not re-derive from its spec and model ({len(diffs)} field(s) differ):\n  - "
            + "\n  - ".join(shown),
            hint="the lock was edited (its content header recomputed) or made by another tool: do not build from "
            "it; restore it from version control or re-create it with `lockbuild lock --upgrade`")
    if not as_json:
        err.print(f"[green]genuine[/] {path}: every field re-derives from the spec and model at its pins "
                  f"(cutoff {current.python.exclude_newer}, {len(current.debian.suites)} signed InRelease files)")


def _progress_reporter(enabled: bool):  # type: ignore[no-untyped-def]
    """A build `report` callback drawing rich progress on stderr."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                        console=err, transient=False, disable=not enabled)
    tasks: dict[str, Any] = {}

    def report(event: str, data: dict) -> None:
        if event == "plan":
            err.print(f"layers: {data['layers']} ({data['cached']} cached"
                      + (f"; building {', '.join(data['todo'])})" if data["todo"] else ")"))
        elif event == "fetch-start":
            tasks["fetch"] = progress.add_task(f"fetch {data['items']} artifacts", total=data["bytes"])
        elif event == "fetch-progress" and "fetch" in tasks:
            progress.update(tasks["fetch"], completed=data["done"])
        elif event == "layer-start":
            tasks[data["name"]] = progress.add_task(f"layer {data['name']}", total=None)
        elif event == "warning":
            err.print(f"[yellow]warning[/] {escape(data['message'])}")
        elif event == "layer-done":
            progress.update(tasks[data["name"]], total=data["size"], completed=data["size"])

    return progress, report


def _attachments(lk: Any, lock_bytes: bytes, image_digest: str, cache: Any, *, sbom: bool,
                 provenance: bool) -> list[tuple[str, bytes]]:
    """(artifact type, bytes) for the SBOM / provenance to attach to the image."""
    from lockbuild.audit.attach import PROVENANCE_TYPE, SBOM_TYPE
    from lockbuild.fsutil import sha256_bytes

    lock_digest = "sha256:" + sha256_bytes(lock_bytes)
    out: list[tuple[str, bytes]] = []
    if sbom:
        from lockbuild.audit.sbom import sbom_json

        out.append((SBOM_TYPE, sbom_json(lk, lock_digest, image_digest=image_digest, cache=cache).encode()))
    if provenance:
        from lockbuild.audit.provenance import render, statement

        out.append((PROVENANCE_TYPE, render(statement(lk, lock_digest, image_digest)).encode()))
    return out


@app.command()
def image(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    oci: Annotated[Path | None, typer.Option("--oci", help="write an OCI image layout directory")] = None,
    archive: Annotated[Path | None, typer.Option("--docker-archive", help="write a `docker load` tarball")] = None,
    load: Annotated[bool, typer.Option("--load", help="load into the running Docker engine")] = False,
    push: Annotated[str | None, typer.Option("--push", help="push to REGISTRY/REPO[:TAG]")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="tag for --load / archive (default: name:lock)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="parallel downloads")] = 4,
    compression: Annotated[str | None, typer.Option(
        "--compression", help="gzip|zstd layers for --oci/--push (default: the lock's [image] compression)")] = None,
    attach_sbom: Annotated[bool, typer.Option("--sbom", help="attach a CycloneDX SBOM (OCI layout and push)")] = False,
    attach_provenance: Annotated[bool, typer.Option("--provenance", help="attach SLSA provenance")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build the image from the lock alone (no daemon, no resolution); print its digest.

    Example: [bold]lockbuild image --oci out/oci --docker-archive out/image.tar --load[/]
    """
    from lockbuild.assemble.build import build
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.io import loads

    path = _lock_path(spec, lock_file)
    from lockbuild.errors import LockFileError

    try:
        lock_bytes = path.read_bytes()
    except FileNotFoundError:
        raise LockFileError(f"no lock at {path}", hint="run `lockbuild lock` first") from None
    lk = loads(lock_bytes.decode("utf-8"), str(path))
    if compression is not None:
        from dataclasses import replace

        from lockbuild.errors import BuildError
        from lockbuild.oci.tar import COMPRESSIONS

        if compression not in COMPRESSIONS:
            raise BuildError(f"--compression {compression!r} is not one of {', '.join(COMPRESSIONS)}",
                             hint="use --compression gzip or --compression zstd")
        lk = replace(lk, compression=compression)
    cache = Cache()
    progress, report = _progress_reporter(not as_json and err.is_terminal)
    warnings: list[str] = []  # in --json mode too: a skipped step must never be silent

    def json_report(event: str, data: dict) -> None:
        if event == "warning":
            warnings.append(str(data.get("message", "")))

    with progress:
        result = build(lk, lock_bytes, cache, lock_dir=path.resolve().parent, jobs=jobs,
                       report=report if not as_json else json_report)
    img = result.image
    repo_tag = tag or f"{lk.image_name}:{lk.inputs_digest.split(':')[1][:12]}"
    if oci is None and archive is None and not load and push is None:
        oci = path.resolve().parent / "out" / "oci"
    outputs: dict[str, Any] = {}
    attachments = _attachments(lk, lock_bytes, img.manifest_digest, cache, sbom=attach_sbom,
                               provenance=attach_provenance)
    if oci is not None:
        from lockbuild.audit.attach import attach_to_layout
        from lockbuild.oci.layout import write_oci_layout

        write_oci_layout(img, oci, cache, ref_name=repo_tag.rsplit(":", 1)[1])
        outputs["oci"] = str(oci)
        for artifact_type, data in attachments:
            attach_to_layout(oci, img.manifest_digest, data, artifact_type)
    gz_img = img
    if (archive is not None or load) and lk.compression != "gzip":
        # docker load (Docker 20.10) reads gzip only: the same layers (same diff_ids, same config), gzip blobs
        with progress:
            gz_img = build(lk, lock_bytes, cache, lock_dir=path.resolve().parent, jobs=jobs,
                           report=report if not as_json else json_report, compression="gzip").image
        outputs["gzip_digest"] = gz_img.manifest_digest
    if archive is not None:
        from lockbuild.oci.docker_archive import write_docker_archive

        write_docker_archive(gz_img, archive, cache, repo_tag=repo_tag)
        outputs["docker_archive"] = str(archive)
    if load:
        from lockbuild.oci.daemon import engine
        from lockbuild.oci.daemon import load as daemon_load

        outputs["loaded"] = daemon_load(gz_img, cache, engine(), repo_tag)
        outputs["tag"] = repo_tag
    if push is not None:
        from lockbuild.oci.registry import push as registry_push

        pushed = registry_push(img, push, cache)
        outputs["pushed"] = push
        outputs["push"] = pushed.to_dict()
        if attachments:
            from lockbuild.audit.attach import push_referrer, subject_descriptor

            outputs["referrers"] = [push_referrer(push, subject_descriptor(img.manifest), data, artifact_type).digest
                                    for artifact_type, data in attachments]
    size = sum(layer.size for _, layer, _ in result.layers)
    summary = {
        "digest": img.manifest_digest, "config_digest": img.config_digest, "compressed_bytes": size,
        "layers": [{"name": p.name, "digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                    "reused": reused, **(result.stats or {}).get(p.name, {})} for p, layer, reused in result.layers],
        **outputs,
    }
    if warnings:
        summary["warnings"] = sorted(set(warnings))
    if as_json:
        emit_json(summary)
    else:
        for k, v in outputs.items():
            err.print(f"  {k}: {v}")
        _print_layer_sizes(err, result)
        err.print(f"[green]image[/] {lk.image_name} {size / 1e6:.1f} MB compressed, {len(result.layers)} layers")
        out.print(img.manifest_digest)


def _print_layer_sizes(err: Console, result: Any) -> None:
    """Per layer: unpacked MB before -> after the lock's [build] rules (pruned files, .pyc added), gzip MB."""
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
        err.print(f"{line}; {layer.size / mb:.1f} MB gzip{' (cached)' if reused else ''}")


@app.command()
def verify(
    image_ref: Annotated[str, typer.Argument(metavar="IMAGE", help="OCI dir, docker-archive, engine ref, or "
                                             "registry ref (docker://host/repo:tag)")],
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    rederive: Annotated[bool, typer.Option("--rederive", help="derive every expected layer from the lock's "
                                           "inputs; ignore the signed layer records of this machine")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Prove an image against the lock: the image the lock determines is derived with the builder's own
    code and compared layer by layer, entry by entry, and config (exits 13 on any difference).

    Example: [bold]lockbuild verify out/oci[/]
    """
    from lockbuild.errors import VerifyFailed
    from lockbuild.lock.io import read_lock

    path = _lock_path(spec, lock_file)
    lk = read_lock(path)
    with err.status("verifying…"):
        report = _run_verify(image_ref, lk, path, rederive=rederive)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_findings(report)
    if not report.ok:
        raise VerifyFailed(f"{len(report.findings)} mismatch(es) between {report.image} and the image {path} "
                           "determines", hint="rebuild the image from this lock (`lockbuild image`); the "
                           "findings name each path, expected vs found, and where the expected one comes from")
    if not as_json:
        err.print(f"[green]verified[/] {report.image} is the image {path} determines")


def _run_verify(image_ref: str, lk: Any, path: Path, *, rederive: bool = False) -> Any:
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.io import lock_digest
    from lockbuild.verify.source import opened
    from lockbuild.verify.verify import verify as run_verify

    with opened(image_ref) as src:
        return run_verify(src, lk, path.read_bytes(), lock_digest(path), Cache(),
                          lock_dir=path.resolve().parent, rederive=rederive)


def _print_findings(report: Any) -> None:
    from rich.table import Column, Table

    checked = ", ".join(f"{k} {v}" for k, v in sorted(report.checked.items()))
    if report.findings:
        t = Table("check", Column("path", overflow="fold", min_width=24), "expected", "found", "problem",
                  "expected from", title="verify findings")
        for f in report.findings[:200]:
            t.add_row(escape(f.check), escape(f.path), escape(f.expected[:40]), escape(f.actual[:40]),
                      escape(f.message), escape(f.source))
        err.print(t)
    err.print(f"checked: {checked}")


def _load_json_file(p: Path, what: str) -> Any:
    from lockbuild.errors import SpecError

    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"{what} file {p} does not exist", hint="fix [smoke] in lockbuild.toml") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{what} file {p} is not JSON: {e}") from None


@app.command()
def smoke(
    image_ref: Annotated[str, typer.Argument(metavar="IMAGE", help="OCI dir, docker-archive or engine ref")],
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="JSON body for /invocations")] = None,
    expected_file: Annotated[Path | None, typer.Option("--expected", help="JSON with 'predictions'")] = None,
    timeout: Annotated[int | None, typer.Option(help="seconds to wait for /ping")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="run the image WITHOUT first proving it "
                                            "against the lock (unsafe: it runs whatever the image holds)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify the image against the lock, then run it in a real Docker engine and check real predictions
    (container always removed). An image that fails verify is never run.

    Example: [bold]lockbuild smoke out/oci[/]   (engine: scripts/dockerd.sh start)
    """
    from lockbuild.errors import LockFileError, SmokeFailed, VerifyFailed
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.io import read_lock
    from lockbuild.oci.daemon import engine
    from lockbuild.spec import load_spec
    from lockbuild.verify.smoke import smoke as run_smoke

    s = load_spec(spec)
    lock_path = _lock_path(s.path, lock_file)
    lk = read_lock(lock_path)
    if no_verify:
        err.print("[bold red]WARNING: --no-verify: the image is NOT checked against the lock before it runs; "
                  "whatever code it holds will execute[/]")
    else:
        with err.status("smoke: verifying the image against the lock first…"):
            vreport = _run_verify(image_ref, lk, lock_path)
        if not vreport.ok:
            if as_json:
                emit_json({"image": image_ref, "ok": False, "verified": False, "verify": vreport.to_dict()})
            else:
                _print_findings(vreport)
            raise VerifyFailed(f"smoke refused to run {vreport.image}: {len(vreport.findings)} mismatch(es) with "
                               f"the image {lock_path} determines",
                               hint="rebuild the image from this lock; `--no-verify` runs it anyway (unsafe)")
    cache = Cache()
    mlmodel = next((f for f in lk.model.files if f.path == "MLmodel"), None)
    mlmodel_path = cache.get(mlmodel.sha256) if mlmodel else None
    mlmodel_text = mlmodel_path.read_text() if mlmodel_path else None
    expected = None
    body: Any = None
    if input_file is not None:
        body = _load_json_file(input_file, "input")
    elif s.smoke_input:
        body = _load_json_file(s.resolve_path(s.smoke_input), "input")
    exp_path = expected_file or (s.resolve_path(s.smoke_expected) if s.smoke_expected else None)
    if exp_path is not None:
        exp = _load_json_file(exp_path, "expected")
        expected = exp.get("predictions") if isinstance(exp, dict) else exp
        if body is None and isinstance(exp, dict) and "input" in exp:
            body = exp["input"]
    if body is None:
        example = next((f for f in lk.model.files if f.path == "serving_input_example.json"), None)
        p = cache.get(example.sha256) if example else None
        if p is None:
            raise LockFileError("no input to send: the model has no serving_input_example.json",
                                hint="set [smoke] input = \"FILE.json\" in lockbuild.toml or pass --input")
        body = json.loads(p.read_text())
    with err.status("smoke: starting container…"):
        report = run_smoke(engine(), image_ref, lk, body=body, expected=expected, tolerance=s.smoke_tolerance,
                           timeout=timeout or s.smoke_timeout, mlmodel_text=mlmodel_text)
    if as_json:
        emit_json({**report.to_dict(), "verified": not no_verify})
    if not report.ok:
        if not as_json:
            err.print("[dim]container log tail:[/]")
            err.print(escape(report.log_tail[-4000:]))
            for d in report.diagnoses:
                err.print(f"[bold red]diagnosis {d.name}:[/] {escape(d.why)}\n  [cyan]fix:[/] {escape(d.fix)}")
        raise SmokeFailed("; ".join(report.problems),
                          hint=report.diagnoses[0].fix if report.diagnoses else "see the log tail above")
    if not as_json:
        err.print(f"[green]smoke ok[/] ready in {report.seconds_to_ready}s, MLflow {report.version}, "
                  f"predictions {json.dumps(report.predictions)[:200]}")


@app.command()
def doctor(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="warnings are errors")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Static checks on spec + model + lock for known serve-time failures.

    Example: [bold]lockbuild doctor --strict[/]
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.io import read_lock
    from lockbuild.verify.doctor import doctor as run_doctor

    lk = read_lock(_lock_path(spec, lock_file))
    findings = run_doctor(lk, Cache())
    if as_json:
        emit_json({"findings": [f.to_dict() for f in findings]})
    else:
        for f in findings:
            color = "red" if f.severity == "error" else "yellow"
            err.print(f"[{color}]{f.severity}[/] [{f.rule}] {escape(f.what)}\n  why: {escape(f.why)}\n"
                      f"  fix: {escape(f.fix)}")
        if not findings:
            err.print("[green]doctor: no findings[/]")
    bad = [f for f in findings if f.severity == "error" or strict]
    if bad:
        raise DoctorFailed(f"{len(bad)} finding(s) that would break serving", hint=bad[0].fix)


@export_app.command("pylock")
def export_pylock(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="pylock.toml or pylock.<name>.toml")] = Path(
        "pylock.toml"),
) -> None:
    """Write the Python part of the lock as a PEP 751 pylock.toml.

    Example: [bold]lockbuild export pylock -o pylock.toml && uv pip install -r pylock.toml --target site[/]
    """
    import re

    from lockbuild.errors import SpecError
    from lockbuild.fsutil import atomic_write_text
    from lockbuild.lock.io import read_lock
    from lockbuild.lock.pylock import to_pylock

    if not re.fullmatch(r"pylock(\.[^.]+)?\.toml", output.name):
        raise SpecError(f"PEP 751 requires the file name pylock.toml or pylock.<name>.toml, not {output.name}")
    lk = read_lock(_lock_path(spec, lock_file))
    atomic_write_text(output, to_pylock(lk))
    err.print(f"[green]wrote[/] {output} ({len(lk.python.packages)} packages)")


@app.command()
def version() -> None:
    """Print lockbuild's version.

    Example: [bold]lockbuild version[/]
    """
    out.print(__version__)


from lockbuild import cli_audit  # noqa: E402

cli_audit.register(app)


def main() -> None:
    try:
        app()
    except LockbuildError as e:
        if "--json" in sys.argv and not _emitted:
            emit_json(e.to_dict())
        where = f" [dim]({escape(e.where)})[/]" if e.where else ""
        err.print(f"[bold red]{e.kind}:[/] {escape(e.message)}{where}")
        if e.hint:
            err.print(f"[cyan]hint:[/] {escape(e.hint)}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: nothing was left half-written")
        sys.exit(130)
    except OSError as e:  # disk full, permissions, ...: a clear line, never a traceback
        import errno

        if e.errno == errno.ENOSPC:
            err.print(f"[bold red]disk full:[/] {escape(str(e))}")
            err.print("[cyan]hint:[/] free space or point LOCKBUILD_CACHE at a larger disk; no partial output was kept")
            sys.exit(11)
        err.print(f"[bold red]os error:[/] {escape(str(e))}")
        sys.exit(2)
