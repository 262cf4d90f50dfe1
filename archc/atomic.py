"""Writing one output file so that a failed or interrupted command leaves no half-written file.

The data goes to a temporary file in the destination's folder (same file system, so the final rename
is atomic), may be checked there (e.g. loaded as a spec), gets ordinary permissions, and only then
takes the destination's name. Every OSError becomes one UserError line naming the path.

Every destination passes `files.guard_output` first: a FIFO, a device or an input of the command is
never replaced; a single-file option is checked up front by `files.check_output_file` (an existing
file only with --force) and written here with overwrite=force. Used by `schema -o`, `new`,
`import-hf -o`, `diff/compare -o`, `bench --json` and the diagram writers. The ONNX exporter writes
a whole model directory and swaps directories instead (exporters/onnx_export.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from archc.errors import UserError
from archc.files import guard_output, why
from archc.interrupts import deferred_interrupts


def temp_prefix(name: str) -> str:
    """A hidden temporary name beside `name` that stays within the 255-byte name limit whatever
    `name` is (mkstemp adds 8 characters and the suffix)."""
    return f".archc.{name[:32]}."


def write_atomic(path: Path, data: bytes, *, overwrite: bool = True, check: Callable[[Path], None] | None = None,
                 label: str | None = None, make_folder: bool = False,
                 exists_hint: str = "choose another name or pass -o with a new path") -> None:
    """Write `data` to `path` through a temporary file beside it.

    overwrite=False never replaces an existing file (os.link fails if the name is taken, even when it
    appears meanwhile). `check(tmp)` runs on the complete temporary file before it is moved into
    place; a UserError it raises names `path` instead of the temporary file. `label` is how messages
    name the path (e.g. "-o out.yaml"); make_folder creates missing parent folders; exists_hint ends the
    message when overwrite=False meets an existing file.
    """
    shown = label or str(path)
    folder = path.parent
    guard_output(path, shown)  # not a FIFO or device, not one of this command's inputs, a name the system takes
    if make_folder:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{shown}: cannot create folder {folder}: {why(e)}") from None
    if not folder.is_dir():
        raise UserError(f"{shown}: folder {folder} does not exist; create it first")
    if path.is_dir():
        raise UserError(f"{shown}: is a directory; give a file name")
    tmp = None
    try:
        try:
            with deferred_interrupts():  # a signal waits until `tmp` is bound, so the finally below removes it
                fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=folder)
        except OSError as e:
            raise UserError(f"{shown}: cannot write in {folder}: {why(e)}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if check is not None:
            try:
                check(Path(tmp))
            except UserError as e:  # the message names the temporary file; the user knows `path`
                raise UserError(str(e).replace(os.path.relpath(tmp), str(path)).replace(tmp, str(path))) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise UserError(f"{shown} already exists; {exists_hint}") from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise UserError(f"{shown} already exists; {exists_hint}") from None
                os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{shown}: cannot write: {why(e)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str, **options) -> None:
    """`write_atomic` of UTF-8 text, written as given (no newline translation)."""
    write_atomic(path, text.encode("utf-8"), **options)


def check_dir_target(path: Path, *, force: bool = False, label: str | None = None,
                     protect: tuple[Path, ...] = ()) -> tuple[Path, os.stat_result | None]:
    """(absolute path, its lstat or None) when `path` may receive an output directory, else a UserError:
    an existing path must be an empty directory unless `force`; never a non-directory, and never a
    directory that is or holds one of `protect` (the command's inputs), force or not. Commands call it
    before their heavy work, and write_dir_atomic again before writing."""
    shown = label or str(path)
    target = Path(os.path.abspath(path))
    for p in protect:
        inp = Path(os.path.abspath(p))
        if target == inp or target in inp.parents:
            raise UserError(f"{shown}: is or holds the input {p}; choose another directory")
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target, None
    except OSError as e:
        raise UserError(f"{shown}: cannot use this path: {e.strerror}") from None
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode):
        raise UserError(f"{shown}: exists and is not a directory; choose a new directory name")
    try:
        empty = not any(target.iterdir())
    except OSError as e:
        raise UserError(f"{shown}: cannot read: {e.strerror}") from None
    if not empty and not force:
        raise UserError(f"{shown}: exists and is not empty; pass --force to replace it, or choose a new directory")
    return target, st


def write_dir_atomic(path: Path, fill: Callable[[Path], None], *, force: bool = False, label: str | None = None,
                     protect: tuple[Path, ...] = ()) -> None:
    """Build a whole output directory through `fill(tmp)` in a temporary directory beside `path`, then
    rename it into place, so a failed or interrupted command leaves nothing (the temporary directory is
    removed on any exception, KeyboardInterrupt included). `path` is checked by check_dir_target; with
    `force` an existing directory is replaced as a whole (moved aside, the new one renamed in, the old
    one deleted)."""
    import shutil

    shown = label or str(path)
    target, st = check_dir_target(path, force=force, label=label, protect=protect)
    umask = os.umask(0)
    os.umask(umask)
    tmp = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with deferred_interrupts():  # a signal waits until `tmp` is bound, so the excepts below remove it
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        except OSError as e:
            raise UserError(f"{shown}: cannot create the directory: {e.strerror}") from None
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the output gets ordinary permissions
        fill(tmp)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if st is None:
            os.replace(tmp, target)
        elif not any(target.iterdir()):
            os.rmdir(target)
            os.replace(tmp, target)
        else:  # --force: swap the old directory out, the new one in, then delete the old
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "x")
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old / "x", target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{shown}: cannot write: {e.strerror}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
