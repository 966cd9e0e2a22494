"""Export the Python part of a lock as a PEP 751 pylock.toml (installable with uv, hash-checked)."""

from __future__ import annotations

import tomlkit

from lockbuild import __version__
from lockbuild.digest import to_hex
from lockbuild.lockfile.model import Lock


def to_pylock(lock: Lock) -> str:
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"PEP 751 lock exported by lockbuild {__version__} from lockbuild.lock "
                            f"({lock.inputs_digest}); target {lock.target.platform}, "
                            f"Python {lock.target.python}, {lock.target.wheel_platform}"))
    doc.add("lock-version", "1.0")
    doc.add("created-by", "lockbuild")
    # The wheels are tagged for the minor (cp311), not the patch: any 3.11.x interpreter may install them.
    major, minor = lock.target.python.split(".")[:2]
    doc.add("requires-python", f"=={major}.{minor}.*")
    pkgs = tomlkit.aot()
    for w in sorted(lock.python.packages, key=lambda w: w.name):
        t = tomlkit.table()
        t.add("name", w.name)
        t.add("version", w.version)
        if w.source == "sdist" and w.sdist is not None:
            # built by lockbuild from this sdist; an installer builds it again (hash-checked sdist)
            t.add("index", lock.python.index_url)
            sd = tomlkit.inline_table()
            sd.update({"name": w.sdist.filename, "url": w.sdist.url, "size": w.sdist.size,
                       "hashes": {"sha256": to_hex(w.sdist.sha256)}})
            t.add("sdist", sd)
            pkgs.append(t)
            continue
        wheel = tomlkit.inline_table()
        if w.source == "model":  # bundled in the model: the path is relative to the model directory
            wheel.update({"name": w.filename, "path": w.path, "size": w.size, "hashes": {"sha256": to_hex(w.sha256)}})
        else:
            t.add("index", lock.python.index_url)
            wheel.update({"name": w.filename, "url": w.url, "size": w.size, "hashes": {"sha256": to_hex(w.sha256)}})
        arr = tomlkit.array()
        arr.append(wheel)
        t.add("wheels", arr)
        pkgs.append(t)
    doc.add("packages", pkgs)
    return tomlkit.dumps(doc)
