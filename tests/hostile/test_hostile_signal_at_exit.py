"""A Ctrl-C or SIGTERM that lands after the command has finished, while the interpreter shuts down
(torch's and onnxruntime's atexit callbacks run then), is an exit with the signal's status, not a
traceback: Python raises the KeyboardInterrupt inside the atexit callback and prints it as
"Exception ignored in atexit callback" with a traceback (seen in test_signals_during_compile, whose
signal landed just as compile ended).

The child registers, after archc's command ran, an atexit callback that signals its own process, so the
signal always lands during shutdown. Negative control: the same with an in-process call
(main(argv) keeps the caller's handlers) shows the traceback this guards against."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import atexit, os, signal, sys, time
    import archc.cli
    sys.argv = ["archc", "schema"]
    {call}
    def late():  # runs first among the atexit callbacks (last registered)
        os.kill(os.getpid(), {sig})
        time.sleep(0.5)
    atexit.register(late)
    sys.exit(rc)
""")


def _child(call: str, sig: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD.format(call=call, sig=int(sig))], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_shutdown_exits_with_its_status(sig, status):
    p = _child("rc = archc.cli.main()", sig)
    assert p.returncode == status, (p.returncode, p.stderr[-1500:])
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr[-1500:]
    assert '"title"' in p.stdout  # what the command printed before the signal was flushed, not lost


def test_negative_control_python_alone_prints_a_traceback():
    p = _child("rc = archc.cli.main(['schema'])", signal.SIGINT)  # argv given: the caller's handlers stay
    assert "Traceback" in p.stderr and "KeyboardInterrupt" in p.stderr, (p.returncode, p.stderr[-1500:])
