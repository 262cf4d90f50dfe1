"""A signal landing right after a temporary output exists, before its cleanup is armed, leaves nothing.

The window was real: the hostile fuzz (test_hostile_fuzz.test_signals_during_compile) once found a
SIGINT at delay ~0 leaving `.archc.m.*` beside the output on a loaded CI box. Here the signal is sent
deterministically from inside tempfile.mkdtemp / mkstemp, after the path exists and before the caller
has bound it, which is the worst moment. Negative control: the same with the deferral switched off
leaves the temporary behind, so the check can fail."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

import pytest

import archc.atomic
import archc.interrupts
import archc.workdir
import exporters.staging
from archc.atomic import write_atomic, write_dir_atomic
from archc.cli import Terminated, _on_sigterm
from archc.workdir import make_work_dir
from exporters.staging import staged_model_dir


@pytest.fixture(params=[signal.SIGINT, signal.SIGTERM])
def sig(request, monkeypatch):
    """The signal to send, with archc.cli's SIGTERM handler installed as `archc` installs it."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    yield request.param
    signal.signal(signal.SIGTERM, previous)


def _expected(sig):
    return KeyboardInterrupt if sig == signal.SIGINT else Terminated


def _signal_after(monkeypatch, name: str, sig) -> None:
    """tempfile.<name> makes its path, then this process gets `sig` before the call returns."""
    real = getattr(tempfile, name)

    def made_then_signalled(*a, **kw):
        out = real(*a, **kw)
        os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(tempfile, name, made_then_signalled)


def _no_deferral(monkeypatch):
    for mod in (archc.workdir, exporters.staging, archc.atomic):
        monkeypatch.setattr(mod, "deferred_interrupts", contextlib.nullcontext)


def test_deferred_signal_is_raised_at_the_end_of_the_block(sig):
    ran = []
    with pytest.raises(_expected(sig)):
        with archc.interrupts.deferred_interrupts():
            os.kill(os.getpid(), sig)
            ran.append("after the signal")  # still runs: the signal waits for the block's end
    assert ran == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back
    assert signal.getsignal(signal.SIGTERM) is _on_sigterm


def test_without_deferral_the_signal_cuts_in(sig):
    ran = []
    with pytest.raises(_expected(sig)):
        os.kill(os.getpid(), sig)
        ran.append("after the signal")
    assert ran == []  # negative control for the test above: the kill itself is delivered at once


def _staged(root: Path) -> None:
    with staged_model_dir(root / "m", "compile", replacing=False):
        pytest.fail("the signal must end the command before the body")


# (what makes the temporary: the tempfile function the signal follows, the call that writes under root)
WRITERS = {
    "make_work_dir": ("mkdtemp", lambda root: make_work_dir(root, "m", "compile")),
    "staged_model_dir": ("mkdtemp", _staged),
    "write_dir_atomic": ("mkdtemp", lambda root: write_dir_atomic(root / "out", lambda d: (d / "x").write_text("x"))),
    "write_atomic": ("mkstemp", lambda root: write_atomic(root / "f.json", b"{}")),
}


@pytest.mark.parametrize("deferral", [True, False])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_signal_right_after_the_temporary_exists(tmp_path, monkeypatch, sig, writer, deferral):
    """With the deferral nothing is left; without it (negative control) the temporary stays behind."""
    if not deferral:
        _no_deferral(monkeypatch)
    made_by, write = WRITERS[writer]
    _signal_after(monkeypatch, made_by, sig)
    with pytest.raises(_expected(sig)):
        write(tmp_path)
    left = os.listdir(tmp_path)
    assert (left == []) is deferral, left


def test_ctrl_c_while_the_commands_register_is_exit_130(monkeypatch, capsys):
    """main() imported the command modules before its try: a Ctrl-C there (the first half second of every
    command) was a KeyboardInterrupt traceback. Now exit 130 and one line."""
    import archc.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(archc.cli, "_register", interrupted)
    with pytest.raises(SystemExit) as e:
        archc.cli.main(["validate", "llama"])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
