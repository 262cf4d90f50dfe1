"""`archc clean [DIR...]`: remove the hidden work directories a killed archc left (see archc/workdir.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app


@app.command("clean")
def clean_cmd(
    folders: Annotated[Optional[list[Path]], typer.Argument(help="Folders to clean (default: the current folder); "
                                                                 "the folder an -o path was in.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed.")] = False,
) -> None:
    """Remove work directories (.archc.*) of compiles that were killed (SIGKILL, out of memory).

    Only directories whose owner file proves they were made by an archc process on this machine that
    is no longer running are removed; anything else is left alone."""
    from archc.errors import UserError
    from archc.files import stat_path
    from archc.workdir import dir_size, remove_stale, stale_work_dirs

    total = 0
    for folder in folders or [Path(".")]:
        st = stat_path(folder, str(folder))
        if st is None or not folder.is_dir():
            raise UserError(f"{folder}: not a directory; give the folder that held the -o path")
        stale = stale_work_dirs(folder)
        sizes = {d: dir_size(d) for d in stale}
        gone = stale if dry_run else remove_stale(folder)
        for d in gone:
            typer.echo(f"{'would remove' if dry_run else 'removed'} {d} ({sizes.get(d, 0) / 2**20:.1f} MiB)")
        total += len(gone)
    if not total:
        typer.echo("nothing to clean", err=True)
