"""Every command's --help tells the truth: walked generically over the Typer app (commands added later
are covered too), each help page renders every bracketed word its source text has (Rich markup
swallows an unescaped `[deploy]`), shows an example, and its one-line summary in the command list is
one sentence on one line (a docstring's first paragraph that wraps in the source is shown broken)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from rich.errors import StyleSyntaxError
from rich.style import Style
from typer.main import get_command
from typer.testing import CliRunner

from lockbuild.cli import app

TAG = re.compile(r"(\\?)\[([^\[\]\n]+)\]")


def commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group (Typer's own click: duck-typed, groups have `.commands`)."""
    yield path, cmd
    subs = getattr(cmd, "commands", None) or {}
    for name in sorted(subs):
        yield from commands(subs[name], (*path, name))


ALL = list(commands(get_command(app)))


def is_style(tag: str) -> bool:
    if tag.startswith("/") or tag.startswith("link"):
        return True
    try:
        Style.parse(tag)
        return True
    except StyleSyntaxError:
        return False


def literal_brackets(text: str) -> list[str]:
    """`[word]` the reader must see: escaped ones, and unescaped ones that are no Rich style (lost)."""
    return [f"[{m.group(2)}]" for m in TAG.finditer(text) if m.group(1) or not is_style(m.group(2))]


def sources(cmd: Any) -> list[str]:
    return [cmd.help or ""] + [p.help for p in cmd.params if getattr(p, "help", None)]


def rendered(path: tuple[str, ...]) -> str:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert r.exit_code == 0, r.output
    return " ".join(re.sub("[│╭╮╰╯─]", " ", r.output).split())


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) or "lockbuild" for p, _ in ALL])
def test_help_keeps_every_bracketed_word_and_shows_an_example(path: tuple[str, ...], cmd: Any) -> None:
    page = rendered(path)
    lost = [w for text in sources(cmd) for w in literal_brackets(text) if w not in page]
    assert lost == [], f"`lockbuild {' '.join(path)} --help` loses {lost} (escape them: \\[word])"
    assert re.search(r"\bExamples?\b", page), f"`lockbuild {' '.join(path)} --help` shows no example"
    summary = (cmd.help or "").strip().split("\n\n")[0]
    assert "\n" not in summary.strip(), (
        f"`lockbuild {' '.join(path)}`: the first paragraph of its help (its summary in the command list) spans "
        f"several source lines and is shown broken mid-sentence: {summary!r}")


def test_the_walk_sees_every_command() -> None:
    names = {" ".join(p) for p, _ in ALL}
    assert {"lock", "image", "verify", "smoke", "k8s", "export", "export pylock", "export audit-inputs"} <= names
