"""Writing one output file so that a failed or interrupted command leaves no half-written file.

The data goes to a temporary file in the destination's folder (same file system, so the final rename
is atomic), may be checked there (e.g. loaded as a spec), gets ordinary permissions, and only then
takes the destination's name. Every OSError becomes one UserError line naming the path.

Every destination passes `files.guard_output` first: a FIFO, a device or an input of the command is
never replaced. Used by `schema -o`, `new`, `import-hf -o`, `diff/compare -o` and the diagram writers. The ONNX
exporter writes a whole model directory and swaps directories instead (exporters/onnx_export.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from archc.errors import UserError
from archc.files import guard_output, why


def temp_prefix(name: str) -> str:
    """A hidden temporary name beside `name` that stays within the 255-byte name limit whatever
    `name` is (mkstemp adds 8 characters and the suffix)."""
    return f".archc.{name[:32]}."


def write_atomic(path: Path, data: bytes, *, overwrite: bool = True, check: Callable[[Path], None] | None = None,
                 label: str | None = None, make_folder: bool = False) -> None:
    """Write `data` to `path` through a temporary file beside it.

    overwrite=False never replaces an existing file (os.link fails if the name is taken, even when it
    appears meanwhile). `check(tmp)` runs on the complete temporary file before it is moved into
    place; a UserError it raises names `path` instead of the temporary file. `label` is how messages
    name the path (e.g. "-o out.yaml"); make_folder creates missing parent folders.
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
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=folder)
    except OSError as e:
        raise UserError(f"{shown}: cannot write in {folder}: {why(e)}") from None
    try:
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
                raise UserError(f"{path} already exists; choose another name or pass -o with a new path") from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise UserError(f"{path} already exists; choose another name or pass -o with a new path") from None
                os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{shown}: cannot write: {why(e)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str, **options) -> None:
    """`write_atomic` of UTF-8 text, written as given (no newline translation)."""
    write_atomic(path, text.encode("utf-8"), **options)
