"""CycloneDX 1.6 SBOM of an image, from its lock: every .deb, every wheel, the interpreter, the model.

Deterministic: the serial number is a uuid5 of the lock digest (and image digest), the
timestamp is the lock's ``created``, every bom-ref is derived from content, and the JSON is
rendered by cyclonedx-python-lib's outputter (sorted components). Licenses are declared only for
wheels whose METADATA can be read from the cache (the lock has no license field); Debian
licenses are not recorded (their copyright files are free text). See docs/audit.md.
"""

from __future__ import annotations

import email.parser
import email.policy
import zipfile
from collections.abc import Iterable
from datetime import datetime
from email.message import Message
from pathlib import Path

from cyclonedx.contrib.license.exceptions import InvalidSpdxLicenseException
from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import License, LicenseAcknowledgement
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

from lockbuild import __version__
from lockbuild.audit import stable_uuid
from lockbuild.digest import to_hex
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.debs import deb_items
from lockbuild.lockfile.model import Deb, Lock, ModelLock, Wheel

SCHEMA_VERSION = SchemaVersion.V1_6
PROP = "lockbuild"  # property namespace (CycloneDX property taxonomy: <namespace>:<name>)
IMAGE_REF = "lockbuild:image"
MODEL_REF = "lockbuild:model"
MAX_LICENSE_FIELD = 100  # longer `License:` fields are usually the whole license text, not a name
LICENSE_META = "wheel-licenses"  # cache meta namespace: sha256 -> declared license strings


# -- small builders ----------------------------------------------------------------------------------


def _sha256(digest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=to_hex(digest))


def _props(pairs: Iterable[tuple[str, str]]) -> list[Property]:
    return [Property(name=f"{PROP}:{k}", value=v) for k, v in pairs if v]


def _distribution(urls: Iterable[str]) -> list[ExternalReference]:
    return [ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(u)) for u in urls]


def codename(lock: Lock) -> str:
    """'debian:bookworm' -> 'bookworm'."""
    return lock.target.base.partition(":")[2] or lock.target.base


def deb_purl(d: Deb, distro_codename: str) -> PackageURL:
    return PackageURL(type="deb", namespace="debian", name=d.name, version=d.version,
                      qualifiers={"arch": d.architecture, "distro": f"debian-{distro_codename}"})


def wheel_purl(w: Wheel) -> PackageURL:
    return PackageURL(type="pypi", name=w.name, version=w.version)


def image_purl(image_name: str, image_digest: str) -> PackageURL:
    return PackageURL(type="oci", name=image_name.rsplit("/", 1)[-1].lower(), version=image_digest,
                      qualifiers={"repository_url": image_name})


# -- wheel licenses (from METADATA in the cache) ---------------------------------------------------------


def _read_metadata(wheel: Path) -> Message | None:
    try:
        with zipfile.ZipFile(wheel) as z:
            name = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if name is None:
                return None
            return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(z.read(name), headersonly=True)
    except (zipfile.BadZipFile, OSError):
        return None


def declared_licenses(meta: Message) -> list[str]:
    """License-Expression (PEP 639), else a short License field, else the License :: classifiers."""
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return [expression]
    field = (meta.get("License") or "").strip()
    if field and "\n" not in field and len(field) <= MAX_LICENSE_FIELD and field.upper() != "UNKNOWN":
        return [field]
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or () if c.startswith("License ::")]
    return sorted({c for c in classifiers if c and c != "OSI Approved"})


def wheel_licenses(w: Wheel, cache: Cache) -> list[str] | None:
    """Declared license strings of a cached wheel (memoised in the cache's meta), or None if not cached."""
    memo = cache.meta_get(LICENSE_META, w.sha256)
    if memo is not None:
        return list(memo["licenses"])
    path = cache.get(w.sha256, w.size)
    if path is None:
        return None
    meta = _read_metadata(path)
    found = declared_licenses(meta) if meta is not None else []
    cache.meta_put(LICENSE_META, w.sha256, {"licenses": found})
    return found


def cdx_licenses(values: list[str]) -> list[License]:
    factory = LicenseFactory()
    ack = LicenseAcknowledgement.DECLARED
    if len(values) == 1:
        return [factory.make_from_string(values[0], license_acknowledgement=ack)]
    out: list[License] = []
    for v in values:  # several: an expression cannot be mixed with others, so ids or names only
        try:
            out.append(factory.make_with_id(v, acknowledgement=ack))
        except InvalidSpdxLicenseException:
            out.append(factory.make_with_name(v, acknowledgement=ack))
    return out


# -- components ------------------------------------------------------------------------------------------


def deb_component(d: Deb, lock: Lock, urls: tuple[str, ...]) -> Component:
    purl = deb_purl(d, codename(lock))
    interpreter = d.name == lock.target.interpreter_package
    props = [("deb:source", d.source), ("deb:suite", d.suite), ("deb:filename", d.filename),
             ("role", "interpreter" if interpreter else ""),
             ("python.version", lock.target.python if interpreter else "")]
    return Component(
        type=ComponentType.LIBRARY, name=d.name, version=d.version, bom_ref=purl.to_string(), purl=purl,
        hashes=[_sha256(d.sha256)], external_references=_distribution(urls), properties=_props(props),
        description=f"Python {lock.target.python} interpreter (Debian package)" if interpreter else None,
    )


def wheel_component(w: Wheel, licenses: list[str] | None) -> Component:
    purl = wheel_purl(w)
    return Component(
        type=ComponentType.LIBRARY, name=w.name, version=w.version, bom_ref=purl.to_string(), purl=purl,
        hashes=[_sha256(w.sha256)],
        external_references=_distribution([u for u in (w.url or (w.sdist.url if w.sdist else ""),) if u]),
        licenses=cdx_licenses(licenses) if licenses else None,
        properties=_props([("wheel:filename", w.filename), ("wheel:source", w.source),
                           ("wheel:sdist-sha256", w.sdist.sha256 if w.sdist else ""),
                           ("wheel:model-path", w.path)]),
    )


def model_name(m: ModelLock) -> str:
    return m.name or m.resolved_uri.rstrip("/").rsplit("/", 1)[-1] or m.resolved_uri


def model_component(m: ModelLock) -> Component:
    files = [Component(type=ComponentType.FILE, name=f.path, bom_ref=f"{MODEL_REF}:file:{f.path}",
                       hashes=[_sha256(f.sha256)], properties=_props([("size", str(f.size))]))
             for f in m.files]
    props = [("model:uri", m.uri), ("model:resolved-uri", m.resolved_uri), ("model:tree-digest", m.tree_digest),
             ("model:run-id", m.run_id), ("model:flavors", ",".join(m.flavors)),
             ("model:loader-module", m.loader_module), ("model:mlflow-version", m.mlflow_version),
             ("model:python-version", m.python_version), ("model:keras-version", m.keras_version),
             ("model:saved-format", m.saved_format)]
    return Component(type=ComponentType.MACHINE_LEARNING_MODEL, name=model_name(m), version=m.version or None,
                     bom_ref=MODEL_REF, components=files, properties=_props(props),
                     description=f"MLflow model {m.resolved_uri}")


def image_component(lock: Lock, image_digest: str | None) -> Component:
    purl = image_purl(lock.image_name, image_digest) if image_digest else None
    return Component(type=ComponentType.CONTAINER, name=lock.image_name, version=image_digest, bom_ref=IMAGE_REF,
                     purl=purl, hashes=[_sha256(image_digest)] if image_digest else None,
                     description="OCI image built by lockbuild from the lock (digest = image manifest)")


def tool_component() -> Component:
    return Component(type=ComponentType.APPLICATION, name="lockbuild", version=__version__,
                     bom_ref=f"lockbuild@{__version__}")


# -- the BOM ---------------------------------------------------------------------------------------------


def _metadata_props(lock: Lock, lock_digest: str, licensed: int) -> list[Property]:
    t, r = lock.target, lock.runtime
    return _props([
        ("lock.digest", lock_digest), ("lock.inputs-digest", lock.inputs_digest), ("target.platform", t.platform),
        ("target.base", t.base), ("target.python", t.python), ("target.glibc", t.glibc),
        ("target.interpreter", f"{t.interpreter_package}={t.interpreter_deb_version}"),
        ("runtime.serving", f"{r.serving}=={r.mlflow_version}"), ("runtime.server", r.server),
        ("runtime.port", str(r.port)),
        ("licenses", f"declared for {licensed} of {len(lock.python.packages)} wheels (read from cached wheels)"),
    ])


def build_bom(lock: Lock, lock_digest: str, *, image_digest: str | None = None, cache: Cache | None = None) -> Bom:
    """The SBOM as a cyclonedx Bom. ``cache``: read wheel licenses from it (None: no licenses)."""
    deb_urls = {i.sha256: i.urls for i in deb_items(lock.debian)}
    debs = [deb_component(d, lock, deb_urls[d.sha256]) for d in lock.debian.packages]
    licenses = {w.sha256: wheel_licenses(w, cache) if cache else None for w in lock.python.packages}
    wheels = [wheel_component(w, licenses[w.sha256]) for w in lock.python.packages]
    model = model_component(lock.model)
    image = image_component(lock, image_digest)
    licensed = sum(1 for v in licenses.values() if v)
    meta = BomMetaData(timestamp=datetime.fromisoformat(lock.created.replace("Z", "+00:00")), component=image,
                       tools=ToolRepository(components=[tool_component()]),
                       properties=_metadata_props(lock, lock_digest, licensed))
    bom = Bom(serial_number=stable_uuid("sbom", lock_digest, image_digest or ""), metadata=meta,
              components=[*debs, *wheels, model])
    bom.register_dependency(image, [*debs, *wheels, model])
    for c in [*debs, *wheels, model]:
        bom.register_dependency(c)  # known leaf: the lock records no edges between packages
    return bom


def render(bom: Bom) -> str:
    return make_outputter(bom, OutputFormat.JSON, SCHEMA_VERSION).output_as_string(indent=2) + "\n"


def sbom_json(lock: Lock, lock_digest: str, *, image_digest: str | None = None, cache: Cache | None = None) -> str:
    return render(build_bom(lock, lock_digest, image_digest=image_digest, cache=cache))


def validate(text: str) -> str | None:
    """The first schema error of a CycloneDX JSON document, or None (needs the json-validation extra)."""
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SCHEMA_VERSION).validate_str(text)
    return str(error) if error is not None else None
