"""Hidden work directories that outputs are built in, and removing the ones a killed archc left.

A command that writes a directory (compile) builds it in `.archc.<name>.XXXXXXXX/` beside the
destination and renames it into place at the end. Ctrl-C and SIGTERM remove it (cli.main turns
SIGTERM into an exception); SIGKILL, a power cut or an OOM kill cannot. So each work directory holds
OWNER, naming the process that made it: host, pid, the process's start time and the kernel's boot
id. A later compile into the same folder, or `archc clean`, removes a work directory only when it
can prove the owner is dead: same host and either another boot, no such pid, or a pid with another
start time (reused). A directory on a shared file system made on another host, or one without the
file, is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from archc.errors import UserError
from archc.files import why
from archc.interrupts import deferred_interrupts

PREFIX = ".archc."
OWNER = ".archc-owner.json"


def _read_small(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(4096)
    except OSError:
        return None


def _boot_id() -> str | None:
    text = _read_small("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None elsewhere or if gone."""
    text = _read_small(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat; 2 fields precede ')'-split rest


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()), "boot_id": _boot_id()}


def make_work_dir(parent: Path, name: str, label: str) -> Path:
    """A new hidden directory in `parent` for building `name`, marked with this process as owner. A signal
    while it is made waits until the directory is whole and then removes it (archc.interrupts)."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{label}: cannot create the output directory: {why(e)}") from None
    tmp = None
    try:
        with deferred_interrupts():
            tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{name[:32]}.", dir=parent))
            (tmp / OWNER).write_text(json.dumps(_owner()) + "\n")
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"{label}: cannot write in {parent}: {why(e)}") from None
        raise UserError(f"{label}: cannot create the output directory: {why(e)}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return True
    return True


def owner_is_dead(owner: dict) -> bool:
    """True only when this machine can prove the process that made the directory is gone."""
    if owner.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot and owner.get("boot_id") and owner["boot_id"] != boot:
        return True  # made before the last reboot
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    if not _pid_alive(pid):
        return True
    started = owner.get("start_time")
    now = _start_time(pid)
    return bool(started and now and started != now)  # the pid was reused by another process


def stale_work_dirs(parent: Path) -> list[Path]:
    """Work directories in `parent` whose owner is provably dead."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    out = []
    for e in entries:
        if not e.name.startswith(PREFIX):
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        text = _read_small(os.path.join(e.path, OWNER))
        if text is None:
            continue
        try:
            owner = json.loads(text)
        except ValueError:
            continue
        if isinstance(owner, dict) and owner_is_dead(owner):
            out.append(Path(e.path))
    return sorted(out)


def remove_stale(parent: Path) -> list[Path]:
    """Remove the provably dead work directories in `parent`; returns what was removed."""
    removed = []
    for d in stale_work_dirs(parent):
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    return removed


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
