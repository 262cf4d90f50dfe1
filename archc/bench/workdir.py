"""What `archc bench` keeps in --work-dir (ONNX exports, genai builds, the seeded checkpoint), and when
it may reuse one.

A folder is named by what it is (`llama-cuda-fp16-int4-sym-b32`) plus the first hex digits of a
fingerprint of everything that decides its bytes: the resolved spec (its init seed included), the export
options, archc's version and a digest of its code (code_digest: in a development checkout the version
stays while the code that writes the export changes), and for a Hugging Face directory the names, sizes and modification times of its
files (cheap: no weight is read; a checkpoint written again, another directory or another seed gives
another fingerprint). The fingerprint and the parts it hashes are written into the folder as KEY_FILE
after the folder is complete. So:
- no folder under the name: build it (then write the key);
- the folder with its key matching: reuse it;
- a folder without archc's key (the user's, or a build that was stopped before its key) or with another
  key: one line naming --work-dir, exit 2. archc never deletes or writes into a folder it did not make.
Before, the name alone decided, and a changed checkpoint or seed reused the stale export silently.
A folder is built in a hidden work directory beside it (archc.workdir: removed on Ctrl-C and SIGTERM, by
`archc clean` after SIGKILL), sealed there, then renamed into place (`building`): before, the export was
renamed into place first and sealed after, so a Ctrl-C in between (or during the seeded checkpoint's
tokenizer) left a keyless folder that every later bench into that --work-dir refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from archc.errors import UserError

KEY_FILE = "archc-bench-key.json"
SHOWN_DIGITS = 12


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


CODE_PACKAGES = ("archc", "exporters")  # the code that decides an export's (and a seeded checkpoint's) bytes


@functools.cache
def code_digest() -> str:
    """sha256 of the .py files of CODE_PACKAGES (path relative to the package's parent, then the bytes),
    read once per process (~90 files, under 1 MB). Found without importing them (exporters imports nothing
    heavy now, but need not stay so)."""
    h = hashlib.sha256()
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        for root in map(Path, spec.submodule_search_locations):
            for p in sorted(root.rglob("*.py")):
                data = p.read_bytes()
                h.update(f"{p.relative_to(root.parent).as_posix()}\0{len(data)}\0".encode())
                h.update(data)
    return h.hexdigest()


ORT_OPS_SOURCES = (".cc", ".cu", ".h")  # exporters/ort_ops' C++/CUDA files (code_digest reads the .py ones)


def ort_ops_digest() -> str:
    """sha256 of what decides the op library a `--kernels archc` export copies into its folder: exporters/ort_ops'
    C++/CUDA sources, or the ARCHC_ORT_OPS_LIB file that replaces their build (exporters.ort_ops.build.library).
    Read on each call (the environment may change between exports)."""
    h = hashlib.sha256()
    given = os.environ.get("ARCHC_ORT_OPS_LIB")
    if given and Path(given).is_file():
        h.update(b"ARCHC_ORT_OPS_LIB\0" + Path(given).read_bytes())
        return h.hexdigest()
    root = _ort_ops_dir()
    for p in sorted(q for q in root.rglob("*") if q.suffix in ORT_OPS_SOURCES and q.is_file()):
        data = p.read_bytes()
        h.update(f"{p.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _ort_ops_dir() -> Path:
    """exporters/ort_ops, found without importing exporters (as code_digest finds its packages)."""
    return Path(next(iter(importlib.util.find_spec("exporters").submodule_search_locations))) / "ort_ops"


def spec_parts(graph) -> dict:
    """What of archc decides an export's bytes, apart from its options: the resolved spec, archc's version and
    its code (code_digest)."""
    import archc

    return {"archc": archc.__version__, "code": code_digest(), "spec": graph.spec.to_yaml_dict()}


def checkpoint_parts(d: Path) -> dict:
    """A Hugging Face directory as its path and files (name, size, modification time in ns), without reading them."""
    d = Path(d)
    files = []
    for p in sorted(d.iterdir(), key=lambda p: p.name):
        if p.name != KEY_FILE and p.is_file():
            st = p.stat()  # a symlinked shard: its target's size and time
            files.append([p.name, st.st_size, st.st_mtime_ns])
    return {"path": str(d.resolve()), "files": files}


MAX_NAME = 64  # characters of the spec's name kept in a folder name (the fingerprint tells folders apart)
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9._+-]+")


def folder_stem(text: str, limit: int = 160) -> str:
    """`text` as (part of) one plain folder name: runs of other characters become '_', no leading '.' or
    '-', at most `limit` characters. The spec's name is free text: joined as it was, `meta-llama/Llama` made
    a subfolder, `../x` wrote outside --work-dir (outside the temporary directory that close() removes,
    too), and a 300-character name failed with 'File name too long'."""
    return _NOT_IN_NAMES.sub("_", text).lstrip(".-")[:limit] or "model"


def place(work_dir: Path, stem: str, parts: dict) -> Path:
    """The folder in work_dir for what `parts` describe: the stem (folder_stem) and the fingerprint's first digits."""
    return Path(work_dir) / f"{folder_stem(stem)}-{fingerprint(parts)[:SHOWN_DIGITS]}"


def reusable(d: Path, parts: dict) -> bool:
    """False when nothing is at `d` (build it, then seal); True when archc's key there matches `parts`; else
    one line naming --work-dir (module docstring)."""
    if not d.exists() and not d.is_symlink():
        return False
    key = d / KEY_FILE
    try:
        stored = json.loads(key.read_text()) if d.is_dir() and not d.is_symlink() and key.is_file() else None
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint(parts):
        return True
    why = f"its {KEY_FILE} records other inputs" if stored is not None else \
        f"it has no {KEY_FILE} (a folder of yours, or an archc build that was stopped)"
    raise UserError(f"--work-dir {d.parent}: {d.name} is in the way and archc neither reuses nor replaces it: {why}; "
                    "remove it or choose another --work-dir")


def seal(d: Path, parts: dict) -> None:
    """Write the key into a complete folder (atomically, archc.atomic: a stopped write leaves no half key)."""
    from archc.atomic import write_text_atomic

    write_text_atomic(d / KEY_FILE, json.dumps({"fingerprint": fingerprint(parts), "parts": parts}, indent=1, sort_keys=True))


@contextmanager
def building(d: Path, parts: dict, label: str = "--work-dir") -> Iterator[Path]:
    """Yields a path (not yet made) to build the folder `d` at; on a normal exit the key is written into it
    and it is renamed to `d`; on any exception, KeyboardInterrupt and SIGTERM included, nothing is left.
    So a folder under `d`'s name is always whole and sealed."""
    from archc.interrupts import deferred_interrupts
    from archc.workdir import make_work_dir, remove_stale

    remove_stale(d.parent)  # work directories of benches that were killed (SIGKILL, OOM)
    holder = None
    try:
        with deferred_interrupts():  # a signal waits until `holder` is bound, so the finally below removes it
            holder = make_work_dir(d.parent, d.name, label)
        yield holder / d.name
        seal(holder / d.name, parts)
        os.replace(holder / d.name, d)
    finally:
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)
