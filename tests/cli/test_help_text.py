"""Help screens show the help text as written: bracketed text ([batch, seq, vocab]) is not taken as
rich markup, and `--help` carries no `<bool>` metavar."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_cli


def _commands() -> list[str]:
    import typer.main

    from archc.cli import _register, app

    _register()
    return sorted(typer.main.get_command(app).commands)


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_compile_help_keeps_brackets(capsys):
    rc, out, _ = run_cli(["compile", "--help"], capsys)
    assert rc == 0
    flat = _flat(out)
    assert "[batch, seq, vocab]" in flat and "[batch, 1, vocab]" in flat and "[batch, 1]" in flat


@pytest.mark.parametrize("command", _commands())
def test_every_help_screen_shows_its_bracketed_text_and_no_bool_metavar(command, capsys):
    import typer.main

    from archc.cli import app

    rc, out, _ = run_cli([command, "--help"], capsys)
    assert rc == 0
    assert "<bool>" not in out
    flat = _flat(out)
    cmd = typer.main.get_command(app).commands[command]
    for param in cmd.params:
        for bracketed in re.findall(r"\[[^\]]*\]", getattr(param, "help", None) or ""):
            assert _flat(bracketed) in flat, (command, param.name, bracketed)


def test_top_level_help_has_no_bool_metavar(capsys):
    rc, out, _ = run_cli(["--help"], capsys)
    assert rc == 0 and "<bool>" not in out and "compile" in out
