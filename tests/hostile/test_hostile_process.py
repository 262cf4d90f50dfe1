"""6.5 interrupts, 6.12 ENOSPC and the up-front size refusal of 6.6: compile in a child process,
signalled or starved, leaves nothing of its own behind (or only what `archc clean` can prove dead)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hostile_util import T, child, in_process, refused

# big enough that the weights take a few seconds to write (about 70 MB)
SLOW = ["--set", "n_layers=8", "--set", "d_model=512", "--set", "attention.n_heads=8", "--set", "vocab_size=32000",
        "--set", "max_seq_len=64"]


def _work_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".archc.")]


def _compile_until_work_dir(tmp_path: Path) -> subprocess.Popen:
    proc = child(["compile", "llama", *SLOW, "-o", tmp_path / "m"], start=True)
    t0 = time.monotonic()
    while not _work_dirs(tmp_path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 120, "compile never started writing"
        time.sleep(0.05)
    time.sleep(0.3)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_cleans_up_like_sigint(sig, code, tmp_path):
    proc = _compile_until_work_dir(tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigkill_leftover_is_removed_by_clean_and_by_the_next_compile(tmp_path, capsys):
    proc = _compile_until_work_dir(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    left = _work_dirs(tmp_path)
    assert len(left) == 1  # SIGKILL cannot be handled: the work directory stays, marked with its dead owner
    keep = tmp_path / ".archc.not-ours"  # no owner file: not provably archc's, never removed
    keep.mkdir()
    code, out, _ = in_process(["clean", "--dry-run", tmp_path], capsys)
    assert code == 0 and str(left[0]) in out and left[0].exists()
    code, out, _ = in_process(["clean", tmp_path], capsys)
    assert code == 0 and "removed" in out and not left[0].exists() and keep.exists()
    # the next compile into the folder removes a dead compile's leftovers itself
    shutil.copytree(tmp_path / ".archc.not-ours", tmp_path / ".archc.m.dead")
    (tmp_path / ".archc.m.dead" / ".archc-owner.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": proc.pid, "start_time": "1", "boot_id": None}))
    assert in_process(["compile", "llama", *T, "-o", tmp_path / "m"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".archc.not-ours", "m"]


def test_owner_rules():
    """Only provably dead owners: same host and (another boot, no such pid, or a reused pid)."""
    from archc.workdir import _boot_id, _owner, owner_is_dead

    me = _owner()
    assert not owner_is_dead(me)
    assert not owner_is_dead({**me, "host": "elsewhere", "pid": 2**22 + 7})  # another host: cannot tell
    assert owner_is_dead({**me, "pid": 2**22 + 7})  # no such process
    parent = os.getppid()
    from archc.workdir import _start_time

    assert not owner_is_dead({**me, "pid": parent, "start_time": _start_time(parent)})  # alive
    if _start_time(parent):
        assert owner_is_dead({**me, "pid": parent, "start_time": "0"})  # pid reused by another process
    if _boot_id():
        assert owner_is_dead({**me, "boot_id": "another-boot"})


# ---- ENOSPC ----------------------------------------------------------------------------------

def _small_fs(tmp_path: Path) -> Path:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    return mnt


def test_enospc_during_compile_is_one_line(tmp_path, capsys):
    mnt = _small_fs(tmp_path)
    try:
        # 2 MiB of disk; the model is about 2.5 MB of weights: the room check would refuse it up front,
        # so fill the disk after the check to hit ENOSPC while writing
        (mnt / "filler").write_bytes(b"\0" * (1024 * 1024))
        import archc.room as room

        real = room.check_export_room
        room.check_export_room = lambda *a, **k: None
        try:
            import exporters.onnx_export as ox

            ox.check_export_room = room.check_export_room
            line = refused(in_process(["compile", "llama", *T, "--set", "vocab_size=4000", "-o", mnt / "m"], capsys),
                           "no space left")
        finally:
            room.check_export_room = real
            ox.check_export_room = real
        assert line.startswith("error: -o")
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
        # and without the patch, the room check refuses it before writing anything
        refused(in_process(["compile", "llama", *T, "--set", "vocab_size=4000", "-o", mnt / "m"], capsys), "free")
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
        # schema and text outputs: one line too
        with open(mnt / "fill", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        refused(in_process(["schema", "-o", mnt / "s.json"], capsys), "no space left")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---- sizes that cannot fit -------------------------------------------------------------------

@pytest.mark.parametrize("sets", [
    ["--set", "vocab_size=1000000000"],
    ["--set", "d_model=1000000", "--set", "attention.n_heads=1000"],
    # the table at its bound (2^31 rows, spec.py MAX_POSITIONS) of width 4096: 32 TiB of float32
    ["--set", "position.kind=learned", "--set", "position.max_positions=2147483648", "--set", "d_model=4096"],
])
def test_too_big_to_compile_is_refused_up_front(sets, tmp_path):
    t0 = time.monotonic()
    result = child(["compile", "llama", *T, *sets, "-o", tmp_path / "m"], timeout=120)
    line = refused(result, "-o")
    assert "GiB" in line and time.monotonic() - t0 < 120
    assert list(tmp_path.iterdir()) == []
