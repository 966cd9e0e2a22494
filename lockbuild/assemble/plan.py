"""The layer plan: which layers an image has, what goes in each, and each layer's input key.

Order, bottom first: the Debian runtime; one layer per big Python distribution (tensorflow,
numpy, ... rarely change and are large); one layer for the remaining small distributions;
the model; a small config layer (launcher, runtime.json, a copy of the lock). Changing only
the model changes only the model and config layers. The total stays far under containerd's
127-layer limit (MAX_LAYERS).

A layer's key is a digest of everything that determines its bytes (recipe version, the
sha256 of every input, the mtime, target paths), so an unchanged key means an unchanged layer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from lockbuild import __version__
from lockbuild.lock.model import Lock, Wheel

RECIPE = "lockbuild-layers-1"
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
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def python_groups(wheels: tuple[Wheel, ...]) -> list[tuple[str, tuple[Wheel, ...]]]:
    big = sorted((w for w in wheels if w.size >= BIG_WHEEL), key=lambda w: (-w.size, w.name))
    big = big[: MAX_LAYERS - 5]
    small = tuple(sorted((w for w in wheels if w not in big), key=lambda w: w.name))
    groups: list[tuple[str, tuple[Wheel, ...]]] = [(f"python-{w.name}", (w,)) for w in big]
    if small:
        groups.append(("python", small))
    return groups


def plan_layers(lock: Lock, *, mtime: int, lock_digest: str, level: int) -> list[LayerPlan]:
    base = {"recipe": RECIPE, "lockbuild": __version__, "mtime": mtime, "level": level, "python": lock.target.python,
            "platform": lock.target.platform}
    plans = [LayerPlan("debian", "debian", key=_key({**base, "debs": sorted(d.sha256 for d in lock.debian.packages),
                                                      "interpreter": lock.target.interpreter_package}))]
    for name, group in python_groups(lock.python.packages):
        plans.append(LayerPlan(name, "python", group, key=_key({**base, "wheels": sorted(w.sha256 for w in group)})))
    plans.append(LayerPlan("model", "model", key=_key({**base, "model": lock.model.tree_digest})))
    plans.append(LayerPlan("config", "config", key=_key({**base, "lock": lock_digest,
                                                         "launcher": launcher_digest()})))
    return plans
