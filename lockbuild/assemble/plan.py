"""The layer plan: which layers an image has, what goes in each, and each layer's input key.

Order, bottom first: the Debian runtime; one layer per big Python distribution (tensorflow,
numpy, ... rarely change and are large); one layer for the remaining small distributions;
the model; a small config layer (launcher, runtime.json, a copy of the lock). Changing only
the model changes only the model and config layers. The total stays far under containerd's
127-layer limit (MAX_LAYERS).

A layer's key is a digest of everything that determines its bytes (recipe version, the
sha256 of every input, the mtime, target paths), so an unchanged key means an unchanged layer.

Python layers are keyed only by their wheels' sha256, the lock's [build] rules, the target
interpreter (exact version and the sha256 of its Debian packages, which compile the .pyc) and
the builder version, and their tar mtime is the fixed WHEEL_MTIME instead of the lock's created
time: two models on the same TensorFlow get the same TensorFlow layer, stored once in a registry
and on a node.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from lockbuild import __version__
from lockbuild.assemble.bytecode import interpreter_debs
from lockbuild.digest import to_hex
from lockbuild.fsutil import sha256_bytes
from lockbuild.lockfile.model import Deb, Lock, Wheel

RECIPE = "lockbuild-layers-3"  # 2: wheel layers pruned + byte-compiled, fixed mtime; 3: streamed, one RECORD
# 1980-01-01T00:00:00Z: the earliest time a zip (hence a wheel) can record, and the floor pip/wheel
# apply to SOURCE_DATE_EPOCH; not 0 (tools read 0 as "unset"). Every entry of a Python layer has it.
WHEEL_MTIME = 315532800
BIG_WHEEL = 8 << 20  # wheels at least this large get a layer of their own
MAX_LAYERS = 40


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str  # debian | python | model | config
    wheels: tuple[Wheel, ...] = ()
    key: str = ""


def launcher_digest() -> str:
    """The config layer also depends on the launcher shipped with this lockbuild."""
    from importlib import resources

    return hashlib.sha256(resources.files("lockbuild").joinpath("serve/launcher.py").read_bytes()).hexdigest()


def _key(obj: object) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True).encode())


def _hexes(items: Iterable[Wheel | Deb]) -> list[str]:
    """Sorted bare-hex sha256s: the form layer keys were first written with, so layers cached
    before digests were carried as ``sha256:<hex>`` keep their keys."""
    return sorted(to_hex(i.sha256) for i in items)


def python_groups(wheels: tuple[Wheel, ...]) -> list[tuple[str, tuple[Wheel, ...]]]:
    big = sorted((w for w in wheels if w.size >= BIG_WHEEL), key=lambda w: (-w.size, w.name))
    big = big[: MAX_LAYERS - 5]
    small = tuple(sorted((w for w in wheels if w not in big), key=lambda w: w.name))
    groups: list[tuple[str, tuple[Wheel, ...]]] = [(f"python-{w.name}", (w,)) for w in big]
    if small:
        groups.append(("python", small))
    return groups


def plan_layers(lock: Lock, *, mtime: int, lock_digest: str, level: int) -> list[LayerPlan]:
    shared = {"recipe": RECIPE, "lockbuild": __version__, "level": level, "python": lock.target.python,
              "platform": lock.target.platform, "bytecode": lock.build.bytecode}
    base = {**shared, "mtime": mtime}
    # Each key names everything its layer is made of (a cached record verify trusts stands for
    # exactly that): the Debian layer also writes /etc/passwd and /home/<user> for the runtime user,
    # and installs each package under its name; the model layer is its file list, not only the
    # lock's tree-digest (which nothing re-derives from the list).
    plans = [LayerPlan("debian", "debian", key=_key({**base, "debs": _hexes(lock.debian.packages),
                                                      "interpreter": lock.target.interpreter_package,
                                                      "user": lock.runtime.user,
                                                      "packages": sorted([d.name, d.version, d.architecture,
                                                                          d.filename, to_hex(d.sha256)]
                                                                         for d in lock.debian.packages)}))]
    wheel_base = {**shared, "mtime": WHEEL_MTIME, "prune": list(lock.build.prune), "keep": list(lock.build.keep),
                  "interpreter": _hexes(interpreter_debs(lock))
                  if lock.build.bytecode != "none" else []}
    for name, group in python_groups(lock.python.packages):
        plans.append(LayerPlan(name, "python", group,
                               key=_key({**wheel_base, "wheels": _hexes(group),
                                         **({"pruned": sorted([to_hex(w.sha256), list(w.pruned)] for w in group)}
                                            if lock.build.pruned_listed else {})})))
    plans.append(LayerPlan("model", "model", key=_key({**base, "model": lock.model.tree_digest,
                                                       "files": sorted([f.path, f.size, to_hex(f.sha256)]
                                                                       for f in lock.model.files)})))
    plans.append(LayerPlan("config", "config", key=_key({**base, "lock": lock_digest,
                                                         "launcher": launcher_digest()})))
    return plans
