"""The benchmark scripts' output files follow archc's rule: a file already at an output path is the
user's, replaced only with --force. Each script checks its outputs once, right after parsing its
arguments and before any work (a refusal after an hour of measuring would cost the hour), with
archc.files.check_output_file, the check archc's own single-file outputs use.

These scripts are not archc commands (no cli.main turns a UserError into its line), so a refusal is
printed here: one line on stderr naming the argument and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORCE_HELP = "replace output files that are already there (refused without it)"


def add_force(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--force", action="store_true", help=FORCE_HELP)


def check_outputs(ap: argparse.ArgumentParser, force: bool, *outputs: tuple[str, Path | str | None],
                  make_folder: bool = True) -> None:
    """Each (argument, file path) that is not None: refused when a file is there and not `force`, when it
    is a directory or special file, or when its folder cannot be made or written (make_folder: the script
    makes missing folders itself; without it the folder must exist). A script that writes fixed names
    inside an --out DIR passes each of those files, so the line names the very file."""
    from archc.errors import UserError
    from archc.files import check_output_file

    for option, path in outputs:
        if path is None:
            continue
        try:
            check_output_file(path, f"{option} {path}", force=force, make_folder=make_folder)
        except UserError as e:
            print(f"{ap.prog}: {e}", file=sys.stderr)
            raise SystemExit(2) from None


def check_folders(ap: argparse.ArgumentParser, force: bool, option: str, *folders: Path) -> None:
    """Output folders a script hands to an archc command (`train --out`, `compile -o`): one already there
    is refused up front unless `force` (which the script then passes on to that command, whose own
    guard still applies), rather than by the command after the work before it."""
    import os

    from archc.errors import one_line
    from archc.files import FORCE_HINT

    for folder in folders:
        if os.path.lexists(folder) and not force:
            print(f"{ap.prog}: " + one_line(f"{option} {folder}: exists; {FORCE_HINT}"), file=sys.stderr)
            raise SystemExit(2)
