"""One `uv pip compile` call as data: its request (``UvCall``), the argv and input files it becomes
in a work directory, and the environment uv runs in. resolve/uv.py runs it; resolve/headstart.py
starts the same call before the CLI has loaded. Both build the argv here, so a call started early
is the one the resolution would have run, byte for byte. Standard library only: this module is
imported before anything else of lockbuild's.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

REQUIREMENTS = "requirements.in"
CONSTRAINTS = "constraints.txt"
OVERRIDES = "overrides.txt"
OUTPUT = "pylock.toml"


@dataclass(frozen=True)
class UvCall:
    """Everything a `uv pip compile` run depends on, besides the index's answers and uv's cache."""

    requirements: tuple[str, ...]
    constraints: tuple[str, ...]
    python: str  # exact target version
    wheel_platform: str
    index_url: str
    exclude_newer: str
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    only_binary: bool = True
    no_binary: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    preferences: str = ""  # a pylock.toml naming preferred versions ("" for none)

    def files(self) -> dict[str, str]:
        """The input files (name -> text) written into the work directory before uv runs."""
        out = {REQUIREMENTS: "\n".join(self.requirements) + "\n"}
        if self.preferences:
            out[OUTPUT] = self.preferences  # uv prefers the versions an existing output file names
        if self.constraints:
            out[CONSTRAINTS] = "\n".join(self.constraints) + "\n"
        if self.overrides:
            out[OVERRIDES] = "\n".join(self.overrides) + "\n"
        return out

    def argv(self, workdir: Path, uv: str) -> list[str]:
        cmd = [
            uv, "pip", "compile", str(workdir / REQUIREMENTS),
            "--python-platform", self.wheel_platform,
            "--python-version", self.python,
            *(["--only-binary", ":all:"] if self.only_binary else []),
            *[a for name in self.no_binary for a in ("--no-binary", name)],
            "--generate-hashes",
            "--exclude-newer", self.exclude_newer,
            *[a for name in self.exempt for a in ("--exclude-newer-package", f"{name}=false")],
            "--index-url", self.index_url,
            *[a for url in self.extra_index_urls for a in ("--extra-index-url", url)],
            *[a for d in self.find_links for a in ("--find-links", d)],
            "--format", "pylock.toml",
            "--no-header",  # not --quiet: its warnings name yanked releases (UvReport.yanked)
            "--output-file", str(workdir / OUTPUT),
        ]
        if self.constraints:
            cmd += ["--constraint", str(workdir / CONSTRAINTS)]
        if self.overrides:  # lockbuild.resolve.overlap: drop a variant name everywhere
            cmd += ["--override", str(workdir / OVERRIDES)]
        return cmd

    def write_inputs(self, workdir: Path) -> None:
        (workdir / OUTPUT).unlink(missing_ok=True)
        for name, text in self.files().items():
            (workdir / name).write_text(text)

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> UvCall:
        """A call from ``to_dict``'s form; TypeError/ValueError when it is not one."""
        kw: dict[str, object] = {}
        for name, f in cls.__dataclass_fields__.items():
            v = data[name]
            if f.type == "bool":
                if not isinstance(v, bool):
                    raise TypeError(name)
            elif f.type == "str":
                if not isinstance(v, str):
                    raise TypeError(name)
            elif not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise TypeError(name)
            kw[name] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)  # type: ignore[arg-type]


def uv_bin() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def uv_env() -> dict[str, str]:
    """uv's environment: this process's, without UV_*/PIP_* settings or config files (the lock's
    inputs say everything), never downloading an interpreter, caching in lockbuild's cache, retrying
    as every other request of lockbuild does (``net.RETRIES`` attempts, $LOCKBUILD_RETRIES)."""
    from lockbuild import net
    from lockbuild.fetch.cache import default_cache_dir

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env["UV_NO_CONFIG"] = "1"
    env["UV_PYTHON_DOWNLOADS"] = "never"  # resolve for the target only; never fetch an interpreter from outside
    env["UV_HTTP_RETRIES"] = str(max(net.RETRIES - 1, 0))  # 4 attempts by default: uv's own default too
    env.setdefault("UV_CACHE_DIR", str(default_cache_dir() / "uv"))
    return env
