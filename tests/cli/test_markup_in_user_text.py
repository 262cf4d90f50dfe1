"""User text (spec names, references, file names) is printed as written: rich markup in it is neither
a MarkupError traceback nor swallowed as styling, and compile does not write a model and then fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

NAME = "[/]x[bold]y"
SETS = ["--set", f'name="{NAME}"', "--set", 'reference="[red]ref[/red]"']
T = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "attention.n_heads=2", "--set", "mlp.d_ff=64",
     "--set", "vocab_size=50", "--set", "max_seq_len=32"]
SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.mark.parametrize("argv, rc_ok", [
    (["validate", "llama"], 0),
    (["show", "llama"], 0),
    (["diff", "llama", "gpt2"], 1),
    (["compare", "llama", "gpt2"], 0),
])
def test_light_commands_print_markup_as_text(argv, rc_ok, capsys):
    rc, out, err = run_cli(argv + SETS, capsys)
    assert rc == rc_ok, err
    assert NAME in out
    if argv[0] == "show":
        assert "[red]ref[/red]" in out


def test_compile_with_markup_in_the_name_succeeds(tmp_path, capsys):
    out = tmp_path / "m"
    rc, stdout, err = run_cli(["compile", "llama", *T, *SETS, "-o", str(out)], capsys)
    assert rc == 0, err
    assert f"compiled {NAME} -> " in stdout and "[batch, seq, vocab]" in stdout and "\\[" not in stdout


def test_file_names_with_brackets(tmp_path, capsys):
    d = tmp_path / "[red]"
    d.mkdir()
    f = d / "a[b].yaml"
    shutil.copy(SPECS / "gpt2.yaml", f)
    rc, out, err = run_cli(["validate", str(f)], capsys)
    assert rc == 0 and f"ok {f}:" in out, err
    rc, out, _ = run_cli(["show", str(f)], capsys)
    assert rc == 0 and str(f) in out.replace("\n", "")
    bad = d / "bad[/red].yaml".replace("/", "_")
    bad.write_text("name: [unclosed\n")
    rc, out, err = run_cli(["validate", str(bad)], capsys)
    assert rc == 2 and "[red]/bad[_red].yaml" in err and "Traceback" not in err
