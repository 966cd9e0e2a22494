"""SLSA v1 provenance of an image as an in-toto Statement v1, from its lock.

The subject is the image manifest digest. ``resolvedDependencies`` lists the lock file itself and
every artifact the build consumes (signed Debian InRelease indexes, .debs, wheels, model files),
each with its sha256. Deterministic: ``invocationId`` is a uuid5 of the lock and image digests and
``startedOn``/``finishedOn`` are the lock's ``created`` (the build's SOURCE_DATE_EPOCH), never the
clock. Unsigned: the statement is the payload a DSSE envelope (``cosign attest``) would sign.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lockbuild import __version__
from lockbuild.audit import stable_uuid
from lockbuild.digest import to_hex
from lockbuild.fetch.debs import SNAPSHOT_ROOT, deb_items
from lockbuild.lockfile.model import Lock, ModelLock

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://lockbuild.dev/buildtypes/image/v1"
BUILDER_ID = f"https://lockbuild.dev/builder@{__version__}"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _sha256(digest: str) -> dict[str, str]:
    return {"sha256": to_hex(digest)}


def _resource(name: str, digest: str, uri: str | None = None, **annotations: str) -> dict[str, Any]:
    """An in-toto ResourceDescriptor."""
    r: dict[str, Any] = {"name": name, "digest": _sha256(digest)}
    if uri:
        r["uri"] = uri
    if annotations:
        r["annotations"] = dict(sorted(annotations.items()))
    return r


def lock_resource(lock_name: str, lock_digest: str) -> dict[str, Any]:
    r = _resource(lock_name, lock_digest)
    r["mediaType"] = "application/toml"
    return r


def suite_resources(lock: Lock) -> list[dict[str, Any]]:
    """The signed InRelease of every suite, as fetched at lock time (and its snapshot.debian.org copy)."""
    return [_resource(f"{s.name}/InRelease", s.inrelease_sha256, f"{s.archive}/dists/{s.name}/InRelease",
                      snapshot=f"{SNAPSHOT_ROOT}/{s.snapshot_archive}/{s.snapshot}/dists/{s.name}/InRelease",
                      date=s.date)
            for s in lock.debian.suites]


def deb_resources(lock: Lock) -> list[dict[str, Any]]:
    items = {i.sha256: i for i in deb_items(lock.debian)}
    out = []
    for d in lock.debian.packages:
        urls = items[d.sha256].urls
        extra = {"snapshot": urls[1]} if len(urls) > 1 else {}
        out.append(_resource(f"{d.name}_{d.version}_{d.architecture}.deb", d.sha256, urls[0], suite=d.suite, **extra))
    return out


def wheel_resources(lock: Lock) -> list[dict[str, Any]]:
    """Index wheels by URL; a wheel built from an sdist by the sdist (and its build requirements); a wheel
    bundled in the model by its model path."""
    out = []
    for w in lock.python.packages:
        if w.source == "sdist" and w.sdist is not None:
            out.append(_resource(w.filename, w.sha256, w.sdist.url, sdist=w.sdist.filename,
                                 sdist_sha256=w.sdist.sha256))
            out += [_resource(b.filename, b.sha256, b.url, build_requirement_of=w.name) for b in w.build_requires]
        elif w.source == "model":
            out.append(_resource(w.filename, w.sha256, model_file_uri(lock.model, w.path) or w.path))
        else:
            out.append(_resource(w.filename, w.sha256, w.url))
    return out


def model_file_uri(model: ModelLock, path: str) -> str | None:
    """A URI for a model file: below a models:/ or runs:/ URI, file:// for an absolute path, else none."""
    base = model.resolved_uri.rstrip("/")
    if _URI.match(base) and not re.match(r"^[A-Za-z]:[\\/]", base):
        return f"{base}/{path}"
    if base.startswith("/"):
        return "file://" + quote(f"{base}/{path}")
    return None


def model_resources(model: ModelLock) -> list[dict[str, Any]]:
    return [_resource(f"model/{f.path}", f.sha256, model_file_uri(model, f.path)) for f in model.files]


def relative_name(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when below it (stable across checkouts), else as given."""
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:
        return path.as_posix()


def statement(lock: Lock, lock_digest: str, image_digest: str, *, spec_name: str = "lockbuild.toml",
              lock_name: str = "lockbuild.lock", image_name: str | None = None,
              spec_digest: str | None = None) -> dict[str, Any]:
    """The in-toto Statement (SLSA provenance v1) for ``image_digest`` built from ``lock``.
    ``spec_digest`` (sha256 of the spec's bytes; `lockbuild sign` passes it) adds the spec as a
    resolved dependency beside the lock."""
    external = {"spec": spec_name, "lock": lock_name, "lockDigest": lock_digest,
                "inputsDigest": lock.inputs_digest, "imageName": lock.image_name}
    internal = {"created": lock.created, "platform": lock.target.platform, "lockFormat": lock.version}
    spec = [dict(_resource(spec_name, spec_digest), mediaType="application/toml")] if spec_digest else []
    resolved = [lock_resource(lock_name, lock_digest), *spec, *suite_resources(lock), *deb_resources(lock),
                *wheel_resources(lock), *model_resources(lock.model)]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": image_name or lock.image_name, "digest": _sha256(image_digest)}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                                "internalParameters": internal, "resolvedDependencies": resolved},
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"lockbuild": __version__}},
                "metadata": {"invocationId": stable_uuid("provenance", lock_digest, image_digest).urn,
                             "startedOn": lock.created, "finishedOn": lock.created},
            },
        },
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
