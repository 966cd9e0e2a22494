"""The package's stated boundary (docs/architecture.md, "Boundaries"): the pipeline's packages in
layers, each importing only from layers below it. Every import counts: module level, inside a
function, under TYPE_CHECKING. No package-level import circle, no command module importing another,
no verify module importing one that imports it back."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "lockbuild"

# Bottom first. A package may import packages of a lower layer, never one of its own layer or above.
LAYERS: list[set[str]] = [
    {"errors", "__init__"},  # lockbuild/__init__.py: the version
    {"digest", "platforms", "net", "progress"},
    {"fsutil"},
    {"lockfile", "model"},  # the lock's types and file format; the model's metadata
    {"fetch"},  # the content-addressed cache, downloads, model files by sha256
    {"oci"},  # tar, compressors, image documents, layer records, registry/engine I/O
    {"spec", "resolve"},
    {"lock", "assemble", "audit"},  # the lock stage; the builder (recipe, plan, build); audit documents
    {"sign", "publish"},
    {"share", "verify"},  # the shared layer cache; verify/smoke/doctor
    {"cli", "serve"},  # serve/: the launcher in the image (imports nothing of lockbuild)
    {"__main__"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(module: str) -> str:
    """lockbuild.fetch.cache -> fetch; lockbuild.errors -> errors; lockbuild -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every lockbuild module ``path`` imports (absolute or relative), with its line."""
    module = _module_of(path)
    pkg_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "lockbuild"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg_parts[: len(pkg_parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "lockbuild":
                continue
            if base == "lockbuild":  # from lockbuild import x: x is a package or module
                out += [(f"lockbuild.{a.name}" if a.name != "__version__" else "lockbuild", node.lineno)
                        for a in node.names]
            else:
                out.append((base, node.lineno))
    return out


def _module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        for target, _line in _imports(path):
            graph[_module_of(path)].add(target)
    return graph


def test_every_package_has_a_layer():
    packages = {p.name if p.is_dir() else p.stem for p in ROOT.iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert packages - set(RANK) == set(), "add the new package to LAYERS and to docs/architecture.md"


def test_no_import_runs_back_up_the_pipeline():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _package(_module_of(path))
        for target, line in _imports(path):
            dst = _package(target)
            if dst != src and RANK[dst] >= RANK[src]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} (layer {RANK[src]}) imports "
                           f"{target} (layer {RANK[dst]})")
    assert bad == [], "\n".join(bad)


def test_no_module_import_circle():
    """No two modules import each other, directly or through others (function-local imports too)."""
    graph = _module_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t not in graph and not any(k.startswith(t + ".") for k in graph):
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # a package's __init__ re-exporting its own modules is not a circle through the pipeline
    cycles = [c for c in cycles if not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)
