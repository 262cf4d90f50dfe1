"""The user's files: read only regular files, and never write over one that must be kept.

Reading goes through `read_bytes`: it opens without blocking and refuses anything that is not a
regular file before reading a byte (a FIFO would wait forever, /dev/zero would never end), caps the
size, and turns every OSError (too long a name, a symlink loop, ...) into one line. Each file read is
remembered as an input of the running command (`cli.main` starts every command with none), and
files read by other libraries (safetensors, onnx) are declared with `note_input`.

Writing asks `guard_output` first. It refuses an output path that is a special file (a character
device or FIFO would be replaced by a regular file), that is one of the command's inputs (`diff
a.yaml llama -o a.yaml`), or, for a directory, that holds one (`compile hfdir -o hfdir`). A command
that writes one file (diff/compare/draw/schema/import-hf -o, diff --draw, bench --json) also asks
`check_output_file` before its work: an existing file there is the user's, replaced only with --force.

Model directories (`guard_model_dir`) are replaced only when every entry in them is a file archc
wrote there: the names listed in the directory's manifest (MANIFEST, written last by the exporter),
or, for directories made before manifests existed, the exporter's fixed set of files.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from archc.errors import UserError, one_line
from archc.model_dir import DATA_FILE, GENAI_CONFIG_FILE, MODEL_FILE, SPEC_FILE

MAX_READ = 256 * 2**20  # no spec, config or index file is this large; a larger one is not what it claims to be

# (st_dev, st_ino) -> path as given, of every file the running command read
_inputs: dict[tuple[int, int], str] = {}


def reset_inputs() -> None:
    """Forget the inputs of the previous command (in-process callers run several)."""
    _inputs.clear()


def note_input(path: str | os.PathLike) -> None:
    """Record `path` (a file read by another library) as an input of the running command."""
    try:
        st = os.stat(path)
    except OSError:
        return
    _inputs[(st.st_dev, st.st_ino)] = str(path)


def why(e: OSError) -> str:
    """An OSError as the reason a user can act on."""
    reasons = {
        errno.ENOENT: "no such file; check the path",
        errno.ENAMETOOLONG: "file name too long (the file system allows 255 bytes per name); use a shorter name",
        errno.ELOOP: "symbolic link loop; fix the link",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.EISDIR: "is a directory, not a file",
        errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
        errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
        errno.EROFS: "read-only file system; write elsewhere",
        errno.EFBIG: "file too large for this file system",
    }
    return reasons.get(e.errno, e.strerror or str(e))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def stat_path(path: str | os.PathLike, label: str | None = None) -> os.stat_result | None:
    """os.stat, None when nothing is there; any other failure (too long, a loop) is one line."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise UserError(one_line(f"{label or path}: {why(e)}")) from None
    except ValueError:  # a NUL byte in the name
        raise UserError(one_line(f"{label or path!r}: a file name cannot contain a NUL character")) from None


def require_regular_file(path: str | os.PathLike, label: str | None = None, what: str = "a file") -> None:
    """For files a library opens itself (safetensors): nothing there, a directory, a FIFO or a device is one
    line naming `label`. A FIFO reached safetensors' open(), which blocks in Rust until a writer comes:
    a hang that not even SIGTERM ended (the Python handler never ran)."""
    shown = label or str(path)
    st = stat_path(path, shown)
    if st is None:
        raise UserError(one_line(f"{shown}: no such file; give {what}"))
    if not stat.S_ISREG(st.st_mode):
        raise UserError(one_line(f"{shown}: is {kind_of(st.st_mode)}, not a regular file; give {what}"))


def read_bytes(path: str | os.PathLike, label: str | None = None, *, limit: int = MAX_READ) -> bytes:
    """The bytes of a regular file, recorded as an input; every refusal is one UserError line
    '<label>: <reason>'. Nothing is read from a FIFO, device or directory."""
    shown = label or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UserError(one_line(f"{shown}: {why(e)}")) from None
    except ValueError:
        raise UserError(one_line(f"{shown!r}: a file name cannot contain a NUL character")) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(one_line(f"{shown}: is a directory, not a file"))
        if not stat.S_ISREG(st.st_mode):
            raise UserError(one_line(f"{shown}: is {kind_of(st.st_mode)}, not a regular file; give a file"))
        if st.st_size > limit:
            raise UserError(one_line(f"{shown}: {st.st_size} bytes is more than such a file can be ({limit} bytes); "
                                     "check the path"))
        _inputs[(st.st_dev, st.st_ino)] = str(path)
        chunks, left = [], limit + 1
        while left > 0:  # a file that grows while read still stops at the limit
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise UserError(one_line(f"{shown}: more than {limit} bytes; check the path"))
        return b"".join(chunks)
    except OSError as e:
        raise UserError(one_line(f"{shown}: cannot read: {why(e)}")) from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike, label: str | None = None, *, limit: int = MAX_READ) -> str:
    """`read_bytes` decoded as UTF-8 (a decode failure is one line naming the byte)."""
    raw = read_bytes(path, label, limit=limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(one_line(f"{label or path}: not UTF-8 text (byte {e.start})")) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_object(pairs: list) -> dict:
    """json's object_pairs_hook: a key given twice in one object is refused, not read as its last value
    (json.loads' default), which would silently drop the value a reader of the file may take for the one used."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return d


def read_json(path: str | os.PathLike, label: str | None = None, *, limit: int = MAX_READ):
    """A JSON file's value (any JSON type: callers check the shape); bad JSON, or a key given twice in
    one object (which value is meant is not ours to guess), is one line."""
    shown = label or str(path)
    text = read_text(path, shown, limit=limit)
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except _DuplicateKey as e:
        raise UserError(one_line(f"{shown}: key {json.dumps(e.key)[:80]} appears twice in one JSON object; "
                                 "keep the one you mean and delete the other")) from None
    except json.JSONDecodeError as e:
        raise UserError(one_line(f"{shown}: not valid JSON (line {e.lineno}: {e.msg})")) from None
    except RecursionError:
        raise UserError(one_line(f"{shown}: JSON nested too deeply")) from None


# A safetensors file opens with an 8-byte little-endian length and that many bytes of JSON: {name: {dtype,
# shape, data_offsets}, "__metadata__": {...}}. json.loads and safetensors' own parser both keep the last of
# two entries with one name, silently (with equal data_offsets safetensors loads the file as if the first
# were not there), so archc reads the header itself with _unique_object before any reader sees the file.
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; safetensors' own limit


class _NotSafetensors(Exception):
    """The header cannot be read (why in str()); callers word it their way."""


def _safetensors_header(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > MAX_SAFETENSORS_HEADER or n > size - 8:
                raise _NotSafetensors(f"header length {n}")
            header = json.loads(fh.read(n), object_pairs_hook=_unique_object)
    except OSError as e:
        raise _NotSafetensors(str(e)) from None
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deeply
        raise _NotSafetensors(str(e) or type(e).__name__) from None
    if not isinstance(header, dict):
        raise _NotSafetensors("the header is not a JSON object")
    return header


def _named_twice(shown: str, key: str) -> UserError:
    return UserError(one_line(f"{shown}: name {json.dumps(key)[:80]} appears twice in the safetensors header (read as "
                              "the last one, silently, by other tools); which entry is meant is not ours to guess: "
                              "save the file again with each name once"))


def read_safetensors_header(path: str | os.PathLike, label: str | None = None) -> dict:
    """A safetensors file's JSON header as a dict (data not read); a header that cannot be read, or that gives
    one name twice, is one line naming the file. The caller has checked that `path` is a regular file."""
    shown = label or str(path)
    try:
        return _safetensors_header(path)
    except _DuplicateKey as e:
        raise _named_twice(shown, e.key) from None
    except _NotSafetensors as e:
        raise UserError(one_line(f"{shown}: cannot read safetensors header: {e}")) from None


def refuse_duplicate_tensor_names(path: str | os.PathLike, label: str | None = None) -> None:
    """Before a file goes to safetensors' own reader: a name given twice is refused in one line. Any other
    fault is left for that reader to report in its caller's words."""
    try:
        _safetensors_header(path)
    except _DuplicateKey as e:
        raise _named_twice(label or str(path), e.key) from None
    except _NotSafetensors:
        pass


# ------------------------------------------------------------------------------------------------
# Outputs


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


def guard_output(path: str | os.PathLike, label: str | None = None, *, directory: bool = False) -> None:
    """Refuse writing `path` when it is a special file or an input of this command (for a
    directory: when an input lies inside it). Nothing there, or a regular file that is not an
    input, passes: overwriting an output is ordinary."""
    shown = label or str(path)
    st = stat_path(path, shown)
    if st is not None:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise UserError(one_line(f"{shown}: is {kind_of(st.st_mode)}; archc writes only regular files, "
                                     "give another path"))
        if (st.st_dev, st.st_ino) in _inputs:
            raise UserError(one_line(f"{shown}: is an input of this command and would be overwritten; "
                                     "write to another path"))
    if directory and st is not None and stat.S_ISDIR(st.st_mode):
        root = _real(path).rstrip(os.sep) + os.sep
        for read in _inputs.values():
            if _real(read).startswith(root):
                raise UserError(one_line(f"{shown}: holds {read}, an input of this command, and would be replaced; "
                                         "write to another directory"))


FORCE_HINT = "add --force to replace it, or choose another path"


def check_output_file(path: str | os.PathLike, label: str, *, force: bool, make_folder: bool = False) -> None:
    """The up-front check of a single-file output, run before the command does its work, so a refusal
    costs nothing and leaves everything as it was: `path` is not special or an input (guard_output), not
    a directory, not an existing file unless `force` (project rule: nothing a user had is overwritten
    unless they asked), and its folder exists (or, with make_folder, can be made: the nearest existing
    path on the way is a directory) and is writable. `label` names the option and path ("-o d.md").
    The write itself stays atomic and, without force, refuses a file that appeared meanwhile
    (write_atomic(overwrite=False))."""
    guard_output(path, label)
    st = stat_path(path, label)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UserError(one_line(f"{label}: is a directory; give a file name"))
    if os.path.lexists(path) and not force:  # lexists: a dangling symlink is the user's too
        raise UserError(one_line(f"{label}: exists; {FORCE_HINT}"))
    folder = Path(os.path.abspath(path)).parent
    p = nearest_existing(folder)  # where a file or folder gets made
    if not p.is_dir():
        raise UserError(one_line(f"{label}: {p} is not a directory; give a path inside a directory"))
    if p != folder and not make_folder:
        raise UserError(one_line(f"{label}: folder {folder} does not exist; create it first"))
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(one_line(f"{label}: cannot write in {p}: permission denied; write elsewhere"))


def nearest_existing(path: str | os.PathLike) -> Path:
    """`path` itself or the nearest of its parents that exists (a dangling symlink counts: it is there):
    what decides whether a file or folder can be made at `path`."""
    path = Path(os.path.abspath(path))
    return next(p for p in (path, *path.parents) if os.path.lexists(p))


MANIFEST = ".archc-manifest.json"
# What the exporter wrote before it kept a manifest: such a directory is still recognised as archc's
LEGACY_MODEL_FILES = frozenset({MODEL_FILE, DATA_FILE, SPEC_FILE, GENAI_CONFIG_FILE})


def write_manifest(folder: Path, names: list[str]) -> None:
    """Record the files archc wrote in model directory `folder` (written last)."""
    (folder / MANIFEST).write_text(json.dumps({"archc_wrote": sorted(set(names) | {MANIFEST})}, indent=1) + "\n")


def _manifest(folder: Path) -> frozenset[str] | None:
    p = folder / MANIFEST
    try:
        st = os.lstat(p)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
        return frozenset()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        names = data["archc_wrote"]
        return frozenset(n for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", ".."))
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset()


def guard_model_dir(path: str | os.PathLike, label: str | None = None) -> bool:
    """May the exporter replace `path` with a new model directory? False: nothing is there (or an
    empty directory); True: an archc model directory holding only archc's files. Anything else is
    refused with one line naming what would be lost."""
    shown = label or str(path)
    guard_output(path, shown, directory=True)
    p = Path(path)
    st = stat_path(p, shown)
    if st is None:
        return False
    if not stat.S_ISDIR(st.st_mode) or os.path.islink(p):
        raise UserError(one_line(f"{shown}: exists and is not a directory; choose another path"))
    try:
        entries = sorted(os.listdir(p))
    except OSError as e:
        raise UserError(one_line(f"{shown}: {why(e)}")) from None
    if not entries:
        return False
    allowed = _manifest(p)
    if allowed is None:
        allowed = LEGACY_MODEL_FILES if MODEL_FILE in entries else frozenset()
    foreign = [e for e in entries if e not in allowed or not os.path.isfile(p / e) or os.path.islink(p / e)]
    if foreign:
        names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        if set(entries) & {MODEL_FILE, MANIFEST}:
            raise UserError(one_line(f"{shown}: holds {names}, which archc did not write there; "
                                     "move them or choose another path"))
        raise UserError(one_line(f"{shown}: exists and is not an archc model directory (it holds {names}); "
                                 "choose another path"))
    return True
