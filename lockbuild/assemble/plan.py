"""The layer plan: which layers an image has, what goes in each, and each layer's input key.

Order, bottom first: the Debian runtime; one layer per big Python distribution (tensorflow,
numpy, ... rarely change and are large); one layer for the remaining small distributions;
the model; a small config layer (launcher, runtime.json, a copy of the lock). Changing only
the model changes only the model and config layers. The total stays far under containerd's
127-layer limit (MAX_LAYERS).

A layer's key is a digest of everything that determines its bytes (recipe version, the
sha256 of every input, the mtime, target paths), so an unchanged key means an unchanged layer;
what each kind of layer puts in its key is its ``key_inputs`` in assemble/recipe.py.

Python layers are keyed only by their wheels' sha256, the lock's [build] rules, the target
interpreter (exact version and the sha256 of its Debian packages, which compile the .pyc) and
the builder version, and their tar mtime is the fixed WHEEL_MTIME instead of the lock's created
time: two models on the same TensorFlow get the same TensorFlow layer, stored once in a registry
and on a node.
"""

from __future__ import annotations

from lockbuild import __version__
from lockbuild.assemble.recipe import (
    RECIPE,
    WHEEL_MTIME,
    Config,
    DebianRuntime,
    KeyContext,
    LayerKind,
    LayerPlan,
    ModelFiles,
    Wheels,
    layer_key,
)
from lockbuild.lockfile.model import Lock, Wheel

__all__ = ["BIG_WHEEL", "MAX_LAYERS", "WHEEL_MTIME", "LayerPlan", "plan_layers", "python_groups"]

BIG_WHEEL = 8 << 20  # wheels at least this large get a layer of their own
MAX_LAYERS = 40


def python_groups(wheels: tuple[Wheel, ...]) -> list[tuple[str, tuple[Wheel, ...]]]:
    big = sorted((w for w in wheels if w.size >= BIG_WHEEL), key=lambda w: (-w.size, w.name))
    big = big[: MAX_LAYERS - 5]
    small = tuple(sorted((w for w in wheels if w not in big), key=lambda w: w.name))
    groups: list[tuple[str, tuple[Wheel, ...]]] = [(f"python-{w.name}", (w,)) for w in big]
    if small:
        groups.append(("python", small))
    return groups


def plan_layers(lock: Lock, *, mtime: int, lock_digest: str, level: int) -> list[LayerPlan]:
    """The lock's layers, bottom first, each with its kind (assemble/recipe.py) and input key."""
    ctx = KeyContext(shared={"recipe": RECIPE, "lockbuild": __version__, "level": level, "python": lock.target.python,
                             "platform": lock.target.platform, "bytecode": lock.build.bytecode},
                     mtime=mtime, lock_digest=lock_digest)
    wheels = Wheels()
    layers: list[tuple[str, LayerKind, tuple[Wheel, ...]]] = [("debian", DebianRuntime(), ())]
    layers += [(name, wheels, group) for name, group in python_groups(lock.python.packages)]
    layers += [("model", ModelFiles(), ()), ("config", Config(), ())]
    return [_plan(name, kind, group, lock, ctx) for name, kind, group in layers]


def _plan(name: str, kind: LayerKind, group: tuple[Wheel, ...], lock: Lock, ctx: KeyContext) -> LayerPlan:
    return LayerPlan(name, kind.name, group, key=layer_key(kind, lock, group, ctx), recipe=kind)
