"""Publish to an OCI image layout directory; attachments become referrers in the same layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image
from lockbuild.publish import Attachment


@dataclass(frozen=True)
class LayoutPublisher:
    dest: Path
    ref_name: str | None = None  # org.opencontainers.image.ref.name in index.json

    def publish(self, image: Image, cache: Cache, attachments: Sequence[Attachment]) -> dict[str, Any]:
        from lockbuild.audit.attach import attach_to_layout
        from lockbuild.oci.layout import write_oci_layout

        write_oci_layout(image, self.dest, cache, ref_name=self.ref_name)
        for a in attachments:
            attach_to_layout(self.dest, image.manifest_digest, a.data, a.artifact_type)
        return {"oci": str(self.dest)}
