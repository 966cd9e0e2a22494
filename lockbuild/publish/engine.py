"""Publish into a running Docker engine (`docker load`), checked to keep the image ID."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image
from lockbuild.publish import Attachment


@dataclass(frozen=True)
class EnginePublisher:
    repo_tag: str
    docker_host: str | None = None  # None: $DOCKER_HOST, lockbuild's engine, then the system one

    def publish(self, image: Image, cache: Cache, attachments: Sequence[Attachment]) -> dict[str, Any]:
        from lockbuild.oci.daemon import engine, load

        return {"loaded": load(image, cache, engine(self.docker_host), self.repo_tag), "tag": self.repo_tag}
