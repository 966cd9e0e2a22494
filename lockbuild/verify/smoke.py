"""`lockbuild smoke`: run the image in a real Docker engine and check real predictions.

Host networking, 127.0.0.1 only, a free port. Waits for /ping, POSTs the model's input to
/invocations, checks HTTP 200, the output shape the signature promises and (when expected
predictions are given) the values within a tolerance, that /version is the locked
MLflow, and that the serving process (pid 1) runs the locked interpreter (the lock's exact Python,
asked inside the running container). The container is always removed; on failure the log tail and a diagnosis are kept.

An image file is loaded into the engine while verify reads it (``BackgroundLoad``); the container is
created only after verify passed, from the image ID verify proved. A refused image is removed again.
"""

from __future__ import annotations

import json
import math
import socket
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lockbuild.errors import InvalidImage, PublishError, SmokeFailed
from lockbuild.lockfile.model import Lock
from lockbuild.oci.docker_archive import layout_archive
from lockbuild.verify.diagnose import diagnose
from lockbuild.verify.finding import DIAGNOSIS_KEYS, Finding


@dataclass
class SmokeReport:
    image: str
    ok: bool = False
    port: int = 0
    seconds_to_ready: float | None = None
    status: int | None = None
    predictions: Any = None
    version: str | None = None
    python: str | None = None  # the interpreter the serving process runs, e.g. "3.11.2 /usr/bin/python3.11"
    problems: list[str] = field(default_factory=list)
    diagnoses: list[Finding] = field(default_factory=list)
    log_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "ok": self.ok, "port": self.port, "seconds_to_ready": self.seconds_to_ready,
                "status": self.status, "predictions": self.predictions, "version": self.version,
                "python": self.python,
                "problems": self.problems, "log_tail": self.log_tail,
                "diagnoses": [d.to_dict(DIAGNOSIS_KEYS) for d in self.diagnoses]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_file(client: Any, image: str, tag: str) -> str | None:
    """`docker load` of an image file (an OCI layout dir is converted to a docker-archive first, its
    zstd layers as plain tars: Docker 20.10); the reference the engine reports. None: ``image`` is
    not a file (an engine reference, or a path that does not exist)."""
    p = Path(image).expanduser()
    if not p.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="lockbuild-smoke-") as d:
        archive = p
        if p.is_dir():
            archive = Path(d) / "image.tar"
            layout_archive(p, tag, archive, unpack_zstd=Path(d))
        with open(archive, "rb") as f:
            try:
                loaded = client.images.load(f)
            except Exception as e:  # noqa: BLE001 - the engine's error, said plainly
                raise PublishError(f"docker load of {image} failed: {e}") from None
    return str(loaded[0].tags[0]) if loaded and loaded[0].tags else (str(loaded[0].id) if loaded else tag)


class BackgroundLoad:
    """`docker load` of an image file, started while verify reads the same file: the engine's untar
    and decompression overlap verify's hashing. Nothing runs until verify passed, and then only the
    image ID verify proved (``ensure_loaded``): a load of other bytes than the verified ones (the
    file changed in between, an archive whose views disagree) is caught there. When verify fails,
    ``discard`` removes what the load put into the engine, so a refused image is never left behind."""

    def __init__(self, client: Any, image: str, tag: str) -> None:
        self.client = client
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockbuild-load")
        self._future: Future[str | None] = self._pool.submit(load_file, client, image, tag)

    def ref(self) -> str | None:
        """The loaded reference (None: not a file); the load's error, if it failed."""
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=True)

    def discard(self) -> None:
        """Wait for the load, then remove the image it loaded (best effort: the engine's own errors
        are not the user's problem here, verify's refusal is)."""
        try:
            ref = self.ref()
        except Exception:  # noqa: BLE001 - the load failed: nothing was loaded
            return
        if ref is not None:
            remove_loaded(self.client, ref)


def remove_loaded(client: Any, ref: str) -> None:
    """Remove what a load of an image file brought in, not forced: an image the engine also holds
    under another name stays (best effort: the refusal that led here is what matters)."""
    try:
        client.images.remove(ref)
    except Exception:  # noqa: BLE001 - already gone, or also held under another reference
        pass


def ensure_loaded(client: Any, image: str, tag: str, image_id: str | None = None, *,
                  loaded: BackgroundLoad | None = None) -> str:
    """Make `image` (layout dir, archive file or engine ref) available in the engine; return what to
    run. With ``image_id`` (the config digest verify proved) that is the image ID itself, and only
    when the engine holds exactly that image after loading: a container never runs another image
    than the verified one, whatever the archive, the engine's tags or a race in between did.
    ``loaded``: the load already started beside verify (``BackgroundLoad``)."""
    from lockbuild.verify.source import looks_like_path

    ref = loaded.ref() if loaded is not None else load_file(client, image, tag)
    from_file = ref is not None
    if ref is None:
        if looks_like_path(image):
            raise InvalidImage(f"{image} does not exist", hint="pass an OCI layout dir, a docker-archive file or "
                               "an engine reference (docker-daemon:REF)")
        ref = image.removeprefix("docker-daemon:")
    if image_id is None:
        return ref
    try:
        found = client.images.get(image_id)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound and friends
        found = None
    if found is None or found.id != image_id:
        if from_file:  # what the file loaded is not the verified image: it does not stay in the engine
            remove_loaded(client, ref)
        raise SmokeFailed(f"the engine does not hold the verified image {image_id} after loading {image}",
                          hint="the archive or the engine's tag names another image than the one verified; "
                               "rebuild the image from the lock")
    return image_id


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)
    return bool(a == b)


def expected_output_shape(mlmodel_text: str) -> list[int] | None:
    import yaml

    sig = (yaml.safe_load(mlmodel_text) or {}).get("signature") or {}
    outputs = json.loads(sig.get("outputs") or "null")
    if isinstance(outputs, list) and len(outputs) == 1 and outputs[0].get("type") == "tensor":
        return list(outputs[0]["tensor-spec"]["shape"])
    return None


def _wait_ready(http: httpx.Client, base: str, container: Any, timeout: float) -> tuple[bool, bool]:
    """(ready, exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            return False, True
        try:
            if http.get(f"{base}/ping", timeout=2).status_code == 200:
                return True, False
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False, False


def smoke_tag(lock: Lock) -> str:
    """The tag an OCI layout is loaded under."""
    return f"{lock.image_name}:smoke"


def smoke(client: Any, image: str, lock: Lock, *, body: dict, expected: Any | None, tolerance: float,
          timeout: float, mlmodel_text: str | None = None, image_id: str | None = None,
          loaded: BackgroundLoad | None = None) -> SmokeReport:
    """Run ``image`` and check it serves. ``image_id``: the verified config digest; the container is
    created from that image ID (see ensure_loaded), never from a tag. ``loaded``: its load, started
    beside verify."""
    ref = ensure_loaded(client, image, smoke_tag(lock), image_id, loaded=loaded)
    report = SmokeReport(image=ref, port=free_port())
    base = f"http://127.0.0.1:{report.port}"
    env = {"PORT": str(report.port), "HOST": "127.0.0.1"}
    container = client.containers.create(ref, detach=True, network_mode="host", environment=env)
    started = time.monotonic()
    exited = False
    ready = False
    invocations_failed = False
    try:
        if image_id is not None and container.attrs.get("Image") != image_id:
            raise SmokeFailed(f"the container was created from {container.attrs.get('Image')}, not the verified "
                              f"image {image_id}")
        container.start()
        with httpx.Client() as http:
            ready, exited = _wait_ready(http, base, container, timeout)
            if not ready:
                report.problems.append("the container exited before answering /ping" if exited
                                       else f"/ping did not answer within {timeout:.0f}s")
            else:
                report.seconds_to_ready = round(time.monotonic() - started, 2)
                r = http.post(f"{base}/invocations", json=body, timeout=120)
                report.status = r.status_code
                if r.status_code != 200:
                    invocations_failed = True
                    report.problems.append(f"/invocations answered HTTP {r.status_code}: {r.text[:500]}")
                else:
                    _check_predictions(report, r.json(), expected, tolerance, mlmodel_text)
                v = http.get(f"{base}/version", timeout=10)
                report.version = v.text.strip().strip('"')
                if report.version != lock.runtime.mlflow_version:
                    report.problems.append(f"/version is {report.version!r}, the lock pins MLflow "
                                           f"{lock.runtime.mlflow_version}")
                _check_interpreter(report, container, lock)
    except httpx.HTTPError as e:
        report.problems.append(f"the server's answer could not be read: {e}")
    finally:
        try:
            report.log_tail = container.logs(tail=60).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the log is a courtesy; the container is removed regardless
            pass
        finally:
            container.remove(force=True)
    env_map = dict(lock.runtime.env)
    legacy_unset = any(w.name == "tf-keras" for w in lock.python.packages) and env_map.get(
        "TF_USE_LEGACY_KERAS") != "1"
    if report.problems:
        report.diagnoses = diagnose(report.log_tail + "\n" + "\n".join(report.problems),
                                    legacy_keras_unset=legacy_unset, invocations_failed=invocations_failed,
                                    port_opened=ready, exited=exited)
    report.ok = not report.problems
    return report


PROBE = "import os, platform; print(platform.python_version(), os.readlink('/proc/1/exe'))"


def _check_interpreter(report: SmokeReport, container: Any, lock: Lock) -> None:
    """The serving process's interpreter, asked inside the running container: its version must be the
    lock's exact Python (target.python; for a logged minor Debian does not ship, the one lock chose)."""
    from lockbuild.assemble.config import entrypoint

    python = entrypoint(lock)[0]
    code, out = container.exec_run([python, "-c", PROBE])
    text = (out or b"").decode("utf-8", "replace").strip()
    version, _, exe = text.partition(" ")
    report.python = text
    if code != 0 or version != lock.target.python:
        report.problems.append(f"the container's {python} reports {text[:200]!r}, the lock pins Python "
                               f"{lock.target.python}")
    elif exe != python:
        report.problems.append(f"the serving process runs {exe}, not the locked {python}")


def _check_predictions(report: SmokeReport, answer: Any, expected: Any | None, tolerance: float,
                       mlmodel_text: str | None) -> None:
    preds = answer.get("predictions", answer) if isinstance(answer, dict) else answer
    report.predictions = preds
    want_shape = expected_output_shape(mlmodel_text) if mlmodel_text else None
    got = _shape(preds)
    if want_shape is not None:
        ok = len(got) == len(want_shape) and all(w in (-1, None) or w == g for w, g in zip(want_shape, got,
                                                                                               strict=True))
        if not ok:
            report.problems.append(f"output shape {got} does not match the signature's {want_shape}")
    if expected is not None and not _close(preds, expected, tolerance):
        report.problems.append(f"predictions differ from the expected ones beyond tolerance {tolerance}: "
                               f"got {json.dumps(preds)[:300]}, expected {json.dumps(expected)[:300]}")


def _load_json(p: Path, what: str) -> Any:
    from lockbuild.errors import SpecError

    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"{what} file {p} does not exist", hint="fix [smoke] in lockbuild.toml") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{what} file {p} is not JSON: {e}") from None


def model_text(lock: Lock, cache: Any, path: str) -> str | None:
    """A locked model file's text from the cache (verified by its sha256), or None."""
    f = next((f for f in lock.model.files if f.path == path), None)
    p = cache.get(f.sha256) if f else None
    return p.read_text() if p else None


def smoke_request(lock: Lock, cache: Any, *, input_file: Path | None, expected_file: Path | None) -> tuple[Any, Any]:
    """The /invocations body and the expected predictions (None: not checked). The body is the input
    file, else the expected file's "input", else the model's own serving_input_example.json."""
    body: Any = _load_json(input_file, "input") if input_file is not None else None
    expected = None
    if expected_file is not None:
        exp = _load_json(expected_file, "expected")
        expected = exp.get("predictions") if isinstance(exp, dict) else exp
        if body is None and isinstance(exp, dict) and "input" in exp:
            body = exp["input"]
    if body is None:
        example = model_text(lock, cache, "serving_input_example.json")
        if example is None:
            from lockbuild.errors import LockFileError

            raise LockFileError("no input to send: the model has no serving_input_example.json",
                                hint="set [smoke] input = \"FILE.json\" in lockbuild.toml or pass --input")
        body = json.loads(example)
    return body, expected
