"""Pieces every command shares: the --set option and loading a spec (file, library name or model dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.errors import UserError
from archc.loader import library_spec, load_spec
from archc.model_dir import SPEC_FILE
from archc.spec import Spec

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="FIELD=VALUE", help="Override a field, e.g. --set attention.kv_heads=8 (repeatable)."),
]


def resolve_spec_path(arg: str) -> Path:
    """A spec file, a library spec by name ('llama'), or a compiled model directory (its spec.yaml)."""
    p = Path(arg)
    if p.is_dir():
        inner = p / SPEC_FILE
        if not inner.exists():
            raise UserError(f"{arg}: directory has no {SPEC_FILE}; give a spec file or a directory made by `archc compile`")
        return inner
    if not p.exists() and not p.suffix:
        lib = library_spec(arg)
        if lib is not None:
            return lib
    return p


def load(arg: str, sets: list[str] | None = None) -> Spec:
    return load_spec(resolve_spec_path(arg), sets or [])
