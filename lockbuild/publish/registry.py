"""Publish to a registry (HEAD before upload, cross-repo mount), then push attachments as referrers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image
from lockbuild.progress import Progress
from lockbuild.publish import Attachment


@dataclass(frozen=True)
class RegistryPublisher:
    ref: str  # REGISTRY/REPO[:TAG]
    progress: Progress | None = None
    mount_from: str | None = None  # a repository on the same registry to mount blobs from (the shared cache)

    def publish(self, image: Image, cache: Cache, attachments: Sequence[Attachment]) -> dict[str, Any]:
        from lockbuild.oci.registry import push

        pushed = push(image, self.ref, cache, progress=self.progress, mount_from=self.mount_from)
        result: dict[str, Any] = {"pushed": self.ref, "push": pushed.to_dict()}
        if attachments:
            from lockbuild.audit.attach import push_referrer, subject_descriptor

            subject = subject_descriptor(image.manifest)
            result["referrers"] = [push_referrer(self.ref, subject, a.data, a.artifact_type).digest
                                   for a in attachments]
        return result
