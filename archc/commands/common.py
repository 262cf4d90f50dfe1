"""Pieces every command shares: the --set option and loading a spec (file, library name or model dir)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from archc.loader import load_spec, resolve_spec_path  # noqa: F401  (resolve_spec_path: re-exported for commands)
from archc.spec import Spec

# --force of a command that writes one file (-o FILE, --json FILE): replace a file already there
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an existing output file (refused without it).")]

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="FIELD=VALUE", help="Override a field, e.g. --set attention.kv_heads=8 (repeatable)."),
]


def load(arg: str, sets: list[str] | None = None) -> Spec:
    return load_spec(arg, sets or [])
