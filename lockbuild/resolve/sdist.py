"""Lock a source-only dependency: pin its sdist, lock its build requirements with uv (wheels only,
by sha256, same exclude-newer), build it once (lockbuild.fetch.sdist, the builder's own code) and
record the built wheel's filename, size and sha256."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lockbuild.errors import SourceBuildError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.download import Item, fetch_all
from lockbuild.fetch.sdist import MissingBuildRequires, build_wheel, read_build_system
from lockbuild.fsutil import sha256_file
from lockbuild.lockfile.model import Wheel
from lockbuild.resolve.uv import PythonTarget, SdistPin, parse_pylock, target_tags, uv_compile


def lock_build_requires(requires: list[str], *, target: PythonTarget, index_url: str,
                        extra_index_urls: tuple[str, ...], exclude_newer: str, label: str) -> list[Wheel]:
    if not requires:
        return []
    with tempfile.TemporaryDirectory(prefix="lockbuild-uv-build-") as d:
        try:
            text = uv_compile(requires, [], target=target, index_url=index_url, exclude_newer=exclude_newer,
                              workdir=Path(d), extra_index_urls=extra_index_urls)
        except SourceBuildError:
            raise
        except Exception as e:
            message = getattr(e, "message", str(e))
            raise SourceBuildError(
                f"{label}: its build requirements ({', '.join(requires)}) cannot be locked as wheels: "
                f"{message.splitlines()[-1] if message else e}",
                hint=f"pin a version of {label.split()[0]} that publishes a wheel, or exclude it",
            ) from None
    wheels, _ = parse_pylock(text, target_tags(target), target.wheel_platform)
    return wheels


def lock_source_build(pin: SdistPin, *, target: PythonTarget, index_url: str, extra_index_urls: tuple[str, ...],
                      exclude_newer: str, cache: object, epoch: int) -> Wheel:
    if not isinstance(cache, Cache):
        raise SourceBuildError(f"{pin.name} {pin.version} has only an sdist and no cache was given to build it in")
    label = f"{pin.name} {pin.version}"
    sd = pin.sdist
    sdist_path = fetch_all(cache, [Item(urls=(sd.url,), sha256=sd.sha256, size=sd.size, label=sd.filename)])[sd.sha256]
    requires, backend, _ = read_build_system(sdist_path)
    for _attempt in range(3):
        env = lock_build_requires(requires, target=target, index_url=index_url, extra_index_urls=extra_index_urls,
                                  exclude_newer=exclude_newer, label=label)
        blobs = fetch_all(cache, [Item(urls=(w.url,), sha256=w.sha256, size=w.size, label=w.filename) for w in env])
        work = Path(tempfile.mkdtemp(prefix=f"sdist-{pin.name}-", dir=cache.tmpdir()))
        try:
            link = work / sd.filename
            link.symlink_to(sdist_path)
            try:
                built = build_wheel(name=pin.name, version=pin.version, sdist=link,
                                    build_env=[(w, blobs[w.sha256]) for w in env], backend=backend,
                                    python=target.python, epoch=epoch, workdir=work / "build")
            except MissingBuildRequires as e:
                requires = requires + [r for r in e.requires if r not in requires]
                continue
            digest, size = sha256_file(built)
            cache.put_file(built, expected_sha256=digest)
            return Wheel(name=pin.name, version=pin.version, filename=built.name, url="", size=size, sha256=digest,
                         source="sdist", sdist=sd, build_backend=backend, build_requires=tuple(env),
                         source_date_epoch=epoch)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise SourceBuildError(f"{label}: its build backend keeps asking for more build requirements ({requires})")
