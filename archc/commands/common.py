"""Pieces every command shares: the --set and --force options and loading a spec (file, library name or model dir)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from archc.loader import load_spec, resolve_spec_path  # noqa: F401  (resolve_spec_path: re-exported for commands)
from archc.spec import Spec


class Replaces(Enum):
    """What a command's --force replaces; each rule is its own (the help says which)."""

    FILE = "file"  # -o FILE, --json FILE: archc.files.check_output_file
    MODEL_DIR = "model directory"  # compile -o: archc.files.guard_model_dir, only a directory of archc's files
    OUTPUT_DIR = "output directory"  # export-hf -o: archc.atomic.check_dir_target, any non-empty directory
    RUN_FOLDER = "run folder"  # train --out: archc.train.loop.prepare_out, a previous run or any other folder


_FORCE_HELP = {
    Replaces.FILE: "Replace an existing output file (refused without it).",
    Replaces.MODEL_DIR: "Replace a compiled model directory at -o (refused without it; a directory holding files "
                        "archc did not write there is refused even with it).",
    Replaces.OUTPUT_DIR: "Replace an existing non-empty output directory at -o, whatever it holds (refused without it).",
    Replaces.RUN_FOLDER: "Replace --out if it exists: a previous run or any other folder (refused without it; "
                         "--resume continues a run instead).",
}


def force_option(replaces: Replaces):
    """The --force option of a command, declared here for every command so the flag reads the same
    everywhere; `replaces` picks the help that says what exactly it replaces."""
    return Annotated[bool, typer.Option("--force", help=_FORCE_HELP[replaces])]


# --force of a command that writes one file (-o FILE, --json FILE): replace a file already there
ForceOption = force_option(Replaces.FILE)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="FIELD=VALUE", help="Override a field, e.g. --set attention.kv_heads=8 (repeatable)."),
]


def load(arg: str, sets: list[str] | None = None) -> Spec:
    return load_spec(arg, sets or [])
