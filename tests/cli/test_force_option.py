"""Every command's --force comes from one declaration (archc.commands.common.force_option), whose help says what
that command replaces. The expected words are written here by hand from each command's rule (archc.files,
archc.atomic, archc.train.loop), not read from common.py."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from archc.cli import _register, app

ROOT = Path(__file__).resolve().parents[2]
DECLARES_FORCE = re.compile(r'typer\.Option\(\s*"--force"')

EXPECTED = {  # command -> words its --force help must carry
    "compile": "compiled model directory at -o",
    "export-hf": "non-empty output directory at -o",
    "train": "Replace --out if it exists: a previous run or any other folder",
    **{c: "Replace an existing output file" for c in ("diff", "compare", "draw", "schema", "import-hf", "bench")},
}


def _force_helps() -> dict[str, str]:
    _register()
    out = {}
    for name, cmd in typer.main.get_command(app).commands.items():
        for p in cmd.params:
            if "--force" in getattr(p, "opts", ()):
                out[name] = " ".join(p.help.split())
    return out


def test_each_force_says_what_it_replaces():
    helps = _force_helps()
    assert set(helps) == set(EXPECTED)
    for name, words in EXPECTED.items():
        assert words in helps[name] and "refused without it" in helps[name], (name, helps[name])


def test_force_is_declared_only_in_common():
    declared = sorted(p.name for p in (ROOT / "archc" / "commands").glob("*.py") if DECLARES_FORCE.search(p.read_text()))
    assert declared == ["common.py"]
    # negative control: the pattern finds a declaration as the three commands wrote theirs
    assert DECLARES_FORCE.search('force: Annotated[bool, typer.Option("--force", help="Replace an existing model directory at -o.")] = False')
