"""Publish as a `docker load` tarball (docker-archive: Docker's manifest.json plus an OCI index)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image
from lockbuild.publish import Attachment


@dataclass(frozen=True)
class ArchivePublisher:
    dest: Path
    repo_tag: str

    def publish(self, image: Image, cache: Cache, attachments: Sequence[Attachment]) -> dict[str, Any]:
        from lockbuild.oci.docker_archive import write_docker_archive

        write_docker_archive(image, self.dest, cache, repo_tag=self.repo_tag)
        return {"docker_archive": str(self.dest)}  # a docker archive has no place for referrers
