"""Where a built image goes: one tiny interface, one wrapper per output (in the spirit of ko's
``pkg/publish``). ``lockbuild image`` composes the publishers asked for and runs them in order;
each returns the few facts it wants to report (a path, a tag, what was uploaded).

  layout.py    OCI image layout directory (+ SBOM / provenance as OCI referrers)
  archive.py   `docker load` tarball
  engine.py    load into a running Docker engine
  registry.py  push to a registry (+ referrers)

The wrappers hold no format logic: that stays in lockbuild/oci/ (layout, docker_archive, daemon,
registry) and lockbuild/audit/attach.py, which they call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image


@dataclass(frozen=True)
class Attachment:
    """An artifact attached to the image as an OCI referrer (SBOM, provenance)."""

    artifact_type: str
    data: bytes


class Publisher(Protocol):
    """One output of `lockbuild image`."""

    def publish(self, image: Image, cache: Cache, attachments: Sequence[Attachment]) -> dict[str, Any]:
        """Write/send ``image`` (its blobs are in ``cache``); return what to report, by key."""
        ...


def publish_all(publishers: Sequence[Publisher], image: Image, cache: Cache,
                attachments: Sequence[Attachment] = ()) -> dict[str, Any]:
    """Run every publisher in order; their reports merged into one dict."""
    result: dict[str, Any] = {}
    for p in publishers:
        result.update(p.publish(image, cache, attachments))
    return result
