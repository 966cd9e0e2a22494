"""`lockbuild verify`, `smoke` and `doctor`: proof that an image is the lock's and that it serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from lockbuild.cli.common import JsonOpt, LockOpt, SpecOpt, emit_json, err, load_json_file, lock_path
from lockbuild.errors import DoctorFailed


def verify(
    image_ref: Annotated[str, typer.Argument(metavar="IMAGE", help="OCI dir, docker-archive, engine ref, or "
                                             "registry ref (docker://host/repo:tag)")],
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    rederive: Annotated[bool, typer.Option("--rederive", help="derive every expected layer from the lock's "
                                           "inputs; ignore the signed layer records of this machine")] = False,
    key: Annotated[Path | None, typer.Option("--key", "-k", help="PEM public key: first require a valid "
                                             "signature and signed attestations naming this lock")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prove an image against the lock, layer by layer and entry by entry (exit 13 on any difference).

    The image the lock determines is derived with the builder's own code and compared with IMAGE:
    every layer, every entry, and the config.
    With --key, first the image's signature (exit 32 none, 33 invalid), its signed attestations (34)
    and the lock they name (35) are checked; then the digest that was signed is compared.

    Example: [bold]lockbuild verify out/oci[/]   [bold]lockbuild verify docker://HOST/REPO:TAG --key release.pub[/]
    """
    from lockbuild.errors import InvalidImage, VerifyFailed
    from lockbuild.lockfile.io import read_lock

    path = lock_path(spec, lock_file)
    lk = read_lock(path)
    signed: dict | None = None
    if key is not None:
        from lockbuild.cli.sign import verify_key_step
        from lockbuild.lockfile.io import lock_digest

        with err.status("checking signature and attestations…"):
            image_ref, signed = verify_key_step(image_ref, key, lock_digest(path), lk)
        if not as_json:
            err.print(f"[green]signed[/] {signed['repository']}@{signed['digest']} by key {signed['key_id'][:16]}…; "
                      f"attestations: {', '.join(signed['attestations'])}")
    with err.status("verifying…"):
        report = _run_verify(image_ref, lk, path, rederive=rederive)
    if as_json:
        emit_json({**report.to_dict(), **({"signature": signed} if signed is not None else {})})
    else:
        _print_findings(report)
    if report.invalid:
        raise InvalidImage(f"{report.image} cannot be read as an image: {report.findings[0].message}",
                           hint=report.hint or "this is not an image lockbuild wrote for this lock; rebuild it "
                           "(`lockbuild image`)")
    if not report.ok:
        raise VerifyFailed(f"{len(report.findings)} mismatch(es) between {report.image} and the image {path} "
                           "determines", hint="rebuild the image from this lock (`lockbuild image`); the "
                           "findings name each path, expected vs found, and where the expected one comes from")
    if not as_json:
        err.print(f"[green]verified[/] {report.image} is the image {path} determines")


def _run_verify(image_ref: str, lk: Any, path: Path, *, rederive: bool = False) -> Any:
    """The verify report; an image that cannot be read at all is a report with one invalid-image
    finding (never a traceback): malformed documents, tars, blobs, absurd sizes."""
    import tarfile
    import zlib

    from lockbuild.errors import InvalidImage
    from lockbuild.fetch.cache import Cache
    from lockbuild.lockfile.io import lock_digest
    from lockbuild.verify.source import opened
    from lockbuild.verify.verify import Report
    from lockbuild.verify.verify import verify as run_verify

    hint = None
    try:
        with opened(image_ref) as src:
            return run_verify(src, lk, path.read_bytes(), lock_digest(path), Cache(),
                              lock_dir=path.resolve().parent, rederive=rederive)
    except InvalidImage as e:
        why, hint = e.message, e.hint
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, EOFError,
            tarfile.TarError, zlib.error, UnicodeError, OverflowError) as e:  # untrusted input, read defensively
        why = f"{type(e).__name__}: {e}"
    except OSError as e:
        import errno

        if e.errno == errno.ENOSPC:
            raise
        why = f"{type(e).__name__}: {e}"
    report = Report(image=image_ref, hint=hint)
    report.add("invalid-image", image_ref, "an image lockbuild writes", "unreadable", str(why)[:500])
    return report


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
    """Verify the image, then serve real predictions from it in a real Docker engine.

    An image that fails verify is never run; the container is always removed.

    Example: [bold]lockbuild smoke out/oci[/]   (engine: scripts/dockerd.sh start)
    """
    from lockbuild.errors import InvalidImage, LockFileError, SmokeFailed, VerifyFailed
    from lockbuild.fetch.cache import Cache
    from lockbuild.lockfile.io import read_lock
    from lockbuild.oci.daemon import engine
    from lockbuild.spec import load_spec
    from lockbuild.verify.smoke import smoke as run_smoke

    s = load_spec(spec)
    lpath = lock_path(s.path, lock_file)
    lk = read_lock(lpath)
    image_id = None
    if no_verify:
        err.print("[bold red]WARNING: --no-verify: the image is NOT checked against the lock before it runs; "
                  "whatever code it holds will execute[/]")
    else:
        with err.status("smoke: verifying the image against the lock first…"):
            vreport = _run_verify(image_ref, lk, lpath)
        if not vreport.ok:
            if as_json:
                emit_json({"image": image_ref, "ok": False, "verified": False, "verify": vreport.to_dict()})
            else:
                _print_findings(vreport)
            if vreport.invalid:
                raise InvalidImage(f"smoke refused to run {vreport.image}: it cannot be read as an image: "
                                   f"{vreport.findings[0].message}", hint="rebuild the image from this lock")
            raise VerifyFailed(f"smoke refused to run {vreport.image}: {len(vreport.findings)} mismatch(es) with "
                               f"the image {lpath} determines",
                               hint="rebuild the image from this lock; `--no-verify` runs it anyway (unsafe)")
        image_id = vreport.config_digest  # the container runs this image ID and nothing else
    cache = Cache()
    mlmodel = next((f for f in lk.model.files if f.path == "MLmodel"), None)
    mlmodel_path = cache.get(mlmodel.sha256) if mlmodel else None
    mlmodel_text = mlmodel_path.read_text() if mlmodel_path else None
    expected = None
    body: Any = None
    if input_file is not None:
        body = load_json_file(input_file, "input")
    elif s.smoke_input:
        body = load_json_file(s.resolve_path(s.smoke_input), "input")
    exp_path = expected_file or (s.resolve_path(s.smoke_expected) if s.smoke_expected else None)
    if exp_path is not None:
        exp = load_json_file(exp_path, "expected")
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
                           timeout=timeout or s.smoke_timeout, mlmodel_text=mlmodel_text, image_id=image_id)
    if as_json:
        emit_json({**report.to_dict(), "verified": not no_verify})
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
    strict: Annotated[bool, typer.Option("--strict", help="warnings are errors")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Static checks on spec + model + lock for known serve-time failures.

    Example: [bold]lockbuild doctor --strict[/]
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.lockfile.io import read_lock
    from lockbuild.verify.doctor import doctor as run_doctor
    from lockbuild.verify.finding import DOCTOR_KEYS

    lk = read_lock(lock_path(spec, lock_file))
    findings = run_doctor(lk, Cache())
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
