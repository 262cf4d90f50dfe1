"""The model directory, written whole or not at all: the exporter writes into a work directory
beside the target (archc.workdir: named for its owner process, so a later compile removes the
leftovers of one that was killed) and renames it into place at the end. Over an existing model
directory (only one that holds nothing but archc's files: archc.files.guard_model_dir), the new
directory is swapped in and the old one deleted; a failure at any point leaves the old one whole.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from archc.errors import UserError
from archc.files import why, write_manifest
from archc.interrupts import deferred_interrupts
from archc.workdir import OWNER, make_work_dir, remove_stale


@contextmanager
def staged_model_dir(out: Path, label: str, replacing: bool) -> Iterator[Path]:
    """Yields the work directory to write the model's files into; on a normal exit they become `out`."""
    remove_stale(out.parent)  # work directories of compiles that were killed (SIGKILL, OOM)
    tmp = None
    try:
        with deferred_interrupts():  # a signal now waits until `tmp` is bound, so the except below removes it
            tmp = make_work_dir(out.parent, out.name, label)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the model directory gets ordinary permissions
        yield tmp
        os.unlink(tmp / OWNER)
        write_manifest(tmp, os.listdir(tmp))  # last: what a later compile may replace
        if replacing:  # swap in the new directory, then delete the old one (archc's files only, checked by the caller)
            old = make_work_dir(out.parent, out.name, label)
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:  # ENOSPC, EIO, a quota: one line; the work directory goes
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{label}: cannot write the model: {why(e)}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
