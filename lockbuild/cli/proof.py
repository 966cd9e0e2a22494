"""`lockbuild verify`, `smoke` and `doctor`: proof that an image is the lock's and that it serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from lockbuild.cli.common import JsonOpt, LockOpt, SpecOpt, emit_json, err, read_lock_file, tracking_uri
from lockbuild.errors import DoctorFailed

if TYPE_CHECKING:
    from lockbuild.lockfile.io import LockFile

ImagesArg = Annotated[list[str], typer.Argument(metavar="IMAGE...", help="OCI dir, docker-archive, engine ref, "
                                               "or registry ref (docker://host/repo:tag); several: each is "
                                               "proved on its own, the lock's layers derived once")]
RederiveOpt = Annotated[bool, typer.Option("--rederive", help="derive every expected layer from the lock's "
                                           "inputs; ignore the signed layer records of this machine")]
PublicKeyOpt = Annotated[Path | None, typer.Option("--key", "-k", help="PEM public key: first require a valid "
                                                   "signature and signed attestations naming this lock")]
SmokeImageArg = Annotated[str, typer.Argument(metavar="IMAGE", help="OCI dir, docker-archive or engine ref")]
InputOpt = Annotated[Path | None, typer.Option("--input", help="JSON body for /invocations")]
ExpectedOpt = Annotated[Path | None, typer.Option("--expected", help="JSON with 'predictions'")]
TimeoutOpt = Annotated[int | None, typer.Option(help="seconds to wait for /ping")]
NoVerifyOpt = Annotated[bool, typer.Option("--no-verify", help="run the image WITHOUT first proving it "
                                           "against the lock (unsafe: it runs whatever the image holds)")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="warnings are errors")]


def verify(
    image_refs: ImagesArg,
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    rederive: RederiveOpt = False,
    key: PublicKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Prove images against the lock, layer by layer and entry by entry (exit 13 on any difference).

    The image the lock determines is derived with the builder's own code and compared with each
    IMAGE: every layer, every entry, and the config. Several images (the OCI layout, the archive and
    the pushed copy of one build) are each proved on their own; a layer they differ in is derived
    from the lock once. With --json, one image gives its report; several give {"ok", "reports"}.
    With --key (one image), first the image's signature (exit 32 none, 33 invalid), its signed
    attestations (34) and the lock they name (35) are checked; then the digest that was signed is compared.

    Example: [bold]lockbuild verify out/oci out/image.tar[/]   [bold]lockbuild verify docker://H/R:T --key K.pub[/]
    """
    from lockbuild.errors import InvalidImage, SpecError, VerifyFailed
    from lockbuild.fetch.cache import Cache
    from lockbuild.verify.verify import verify_images

    lf = read_lock_file(spec, lock_file)
    signed: dict | None = None
    if key is not None:
        if len(image_refs) != 1:
            raise SpecError(f"--key checks one image's signature; {len(image_refs)} images were given",
                            hint="run `lockbuild verify IMAGE --key KEY` once per signed image")
        from lockbuild.cli.sign import verify_key_step

        with err.status("checking signature and attestations…"):
            ref, signed = verify_key_step(image_refs[0], key, lf)
        image_refs = [ref]
        if not as_json:
            err.print(f"[green]signed[/] {signed['repository']}@{signed['digest']} by key {signed['key_id'][:16]}…; "
                      f"attestations: {', '.join(signed['attestations'])}")
    with err.status("verifying…"):
        reports = verify_images(image_refs, lf, Cache(), rederive=rederive, tracking_uri=tracking_uri(lf))
    if as_json:
        docs = [{**r.to_dict(), **({"signature": signed} if signed is not None else {})} for r in reports]
        emit_json(docs[0] if len(docs) == 1 else {"ok": all(r.ok for r in reports), "reports": docs})
    for report in reports:
        if not as_json:
            _print_findings(report)
            if report.ok:
                err.print(f"[green]verified[/] {report.image} is the image {lf.path} determines")
    for report in reports:
        if report.invalid:
            raise InvalidImage(f"{report.image} cannot be read as an image: {report.findings[0].message}",
                               hint=report.hint or "this is not an image lockbuild wrote for this lock; rebuild it "
                               "(`lockbuild image`)")
    failed = [r for r in reports if not r.ok]
    if failed:
        raise VerifyFailed("; ".join(f"{len(r.findings)} mismatch(es) between {r.image} and the image {lf.path} "
                                     "determines" for r in failed),
                           hint="rebuild the image from this lock (`lockbuild image`); the findings name each "
                           "path, expected vs found, and where the expected one comes from")


def _print_findings(report: Any) -> None:
    from rich.table import Column, Table

    checked = ", ".join(f"{k} {v}" for k, v in sorted(report.checked.items()))
    if report.findings:
        t = Table("check", Column("path", overflow="fold", min_width=24), "expected", "found", "problem",
                  "expected from", title="verify findings")
        for f in report.findings[:200]:
            t.add_row(escape(f.rule), escape(f.path), escape(f.expected[:40]), escape(f.actual[:40]),
                      escape(f.message), escape(f.origin))
        err.print(t)
    for note in report.notes:
        err.print(f"[cyan]note[/] {escape(note)}")
    err.print(f"checked: {checked}")


def smoke(
    image_ref: SmokeImageArg,
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    input_file: InputOpt = None,
    expected_file: ExpectedOpt = None,
    timeout: TimeoutOpt = None,
    no_verify: NoVerifyOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify the image, then serve real predictions from it in a real Docker engine.

    An image that fails verify is never run; the container is always removed.

    Example: [bold]lockbuild smoke out/oci[/]   (engine: scripts/dockerd.sh start)
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.oci.daemon import engine
    from lockbuild.spec import load_spec
    from lockbuild.verify.smoke import BackgroundLoad, model_text, smoke_request, smoke_tag
    from lockbuild.verify.smoke import smoke as run_smoke

    s = load_spec(spec)
    lf = read_lock_file(s.path, lock_file)
    client = engine()
    # the engine loads the file while verify reads it; only the verified image ID ever runs
    loaded = None if no_verify else BackgroundLoad(client, image_ref, smoke_tag(lf.lock))
    try:
        image_id = _verified_image_id(image_ref, lf, as_json=as_json, no_verify=no_verify)
        cache = Cache()
        body, expected = smoke_request(
            lf.lock, cache, input_file=input_file or (s.resolve_path(s.smoke_input) if s.smoke_input else None),
            expected_file=expected_file or (s.resolve_path(s.smoke_expected) if s.smoke_expected else None))
    except BaseException:
        if loaded is not None:
            loaded.discard()  # refused: what the load put into the engine goes too
        raise
    with err.status("smoke: starting container…"):
        report = run_smoke(client, image_ref, lf.lock, body=body, expected=expected, tolerance=s.smoke_tolerance,
                           timeout=timeout or s.smoke_timeout, mlmodel_text=model_text(lf.lock, cache, "MLmodel"),
                           image_id=image_id, loaded=loaded)
    _render_smoke(report, as_json=as_json, verified=not no_verify)


def _verified_image_id(image_ref: str, lf: LockFile, *, as_json: bool, no_verify: bool) -> str | None:
    """Smoke's first step: the image proved against the lock; the config digest (the image ID) the
    container must run. Refuses (exit 13 / 31) an image that does not verify."""
    from lockbuild.errors import InvalidImage, VerifyFailed
    from lockbuild.fetch.cache import Cache
    from lockbuild.verify.verify import verify_image

    if no_verify:
        err.print("[bold red]WARNING: --no-verify: the image is NOT checked against the lock before it runs; "
                  "whatever code it holds will execute[/]")
        return None
    with err.status("smoke: verifying the image against the lock first…"):
        vreport = verify_image(image_ref, lf, Cache(), tracking_uri=tracking_uri(lf))
    if vreport.ok:
        return vreport.config_digest  # type: ignore[no-any-return]  # the container runs this image ID only
    if as_json:
        emit_json({"image": image_ref, "ok": False, "verified": False, "verify": vreport.to_dict()})
    else:
        _print_findings(vreport)
    if vreport.invalid:
        raise InvalidImage(f"smoke refused to run {vreport.image}: it cannot be read as an image: "
                           f"{vreport.findings[0].message}", hint="rebuild the image from this lock")
    raise VerifyFailed(f"smoke refused to run {vreport.image}: {len(vreport.findings)} mismatch(es) with "
                       f"the image {lf.path} determines",
                       hint="rebuild the image from this lock; `--no-verify` runs it anyway (unsafe)")


def _render_smoke(report: Any, *, as_json: bool, verified: bool) -> None:
    from lockbuild.errors import SmokeFailed

    if as_json:
        emit_json({**report.to_dict(), "verified": verified})
    if not report.ok:
        if not as_json:
            err.print("[dim]container log tail:[/]")
            err.print(escape(report.log_tail[-4000:]))
            for d in report.diagnoses:
                err.print(f"[bold red]diagnosis {d.rule}:[/] {escape(d.message)}\n  [cyan]fix:[/] {escape(d.fix)}")
        raise SmokeFailed("; ".join(report.problems),
                          hint=report.diagnoses[0].fix if report.diagnoses else "see the log tail above")
    if not as_json:
        err.print(f"[green]smoke ok[/] ready in {report.seconds_to_ready}s, MLflow {report.version}, "
                  f"Python {report.python}, "
                  f"predictions {json.dumps(report.predictions)[:200]}")


def doctor(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Static checks on spec + model + lock for known serve-time failures.

    Example: [bold]lockbuild doctor --strict[/]
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.verify.doctor import doctor as run_doctor
    from lockbuild.verify.finding import DOCTOR_KEYS

    findings = run_doctor(read_lock_file(spec, lock_file).lock, Cache())
    if as_json:
        emit_json({"findings": [f.to_dict(DOCTOR_KEYS) for f in findings]})
    else:
        for f in findings:
            color = "red" if f.severity == "error" else "yellow"
            rule = escape(f"[{f.rule}]")  # unescaped, Rich takes [rule-name] for a style and drops it
            err.print(f"[{color}]{f.severity}[/] {rule} {escape(f.message)}\n  why: {escape(f.why)}\n"
                      f"  fix: {escape(f.fix)}")
        if not findings:
            err.print("[green]doctor: no findings[/]")
    bad = [f for f in findings if f.severity == "error" or strict]
    if bad:
        raise DoctorFailed(f"{len(bad)} finding(s) that would break serving", hint=bad[0].fix)


def register(app: typer.Typer) -> None:
    app.command()(verify)
    app.command()(smoke)
    app.command()(doctor)
