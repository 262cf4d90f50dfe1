"""The `archc` command line. Each command lives in archc/commands/<name>.py and registers itself on
`app`; heavy libraries (torch, onnxruntime) are imported inside the command functions that need
them, never at module level, so `validate`, `show`, `schema`, `diff` and `compare` start fast.

Errors: a `UserError` anywhere becomes one red line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(
    name="archc",
    help="Declarative architecture-spec compiler for decoder-only language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Modules that register commands, in the order `archc --help` lists them.
COMMAND_MODULES = ["spec_cmds", "plan_cmds", "hf_cmds", "onnx_cmds", "train_cmds", "parallel_cmds", "diff_cmds", "bench_cmds", "main_job",
                   "clean_cmds"]


def _register() -> None:
    for mod in COMMAND_MODULES:
        try:
            importlib.import_module(f"archc.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"archc.commands.{mod}":
                raise


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that every `finally` and
    `except BaseException` cleanup (the exporter's temporary directory) runs."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def _exit_at_once(signum, frame):  # noqa: ARG001
    """Ctrl-C or SIGTERM after the command has returned, while the interpreter shuts down (torch's and
    onnxruntime's atexit callbacks run then): every output is already complete or removed, so exit now with
    the signal's status (130, 143). Left to Python, the KeyboardInterrupt is raised inside an atexit
    callback and printed as a traceback ("Exception ignored in atexit callback")."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # os._exit skips the flush of what the command printed
        except Exception:  # noqa: BLE001 - the signal interrupted a write to this stream; exiting matters more
            pass
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from archc.files import reset_inputs

    reset_inputs()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _dispatch(argv)
    finally:
        if previous is not None and argv is None:  # the process's own command line: it ends after this
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, _exit_at_once)
        elif previous is not None:  # in-process callers (tests) get their own handler back
            signal.signal(signal.SIGTERM, previous)


def _dispatch(argv: list[str] | None) -> int:
    from archc.errors import UserError
    from archc.files import why

    try:
        _register()  # inside the try: a Ctrl-C while the command modules import is exit 130, not a traceback
        # With standalone_mode=False click returns typer.Exit's code instead of raising it.
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int):
            return rc
    except UserError as e:
        raise SystemExit(_print_error(str(e), e.exit_code))
    except typer.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        raise SystemExit(_print_error("interrupted", 130))
    except Terminated:
        raise SystemExit(_print_error("terminated", 143))
    except OSError as e:  # a file system refusal no command anticipated (ENOSPC, EIO, a name too long)
        where = f"{e.filename}: " if e.filename else ""
        raise SystemExit(_print_error(f"{where}{why(e)}", 2))
    except MemoryError:
        raise SystemExit(_print_error("out of memory; the model or input is too large for this machine", 2))
    except Exception as e:  # click's usage errors
        families = _click_exception_modules()

        def caught(name: str) -> tuple:
            return tuple(getattr(m, name) for m in families if hasattr(m, name))

        if isinstance(e, caught("UsageError")):
            raise SystemExit(_print_error(_usage_line(e), 2))
        if isinstance(e, caught("Abort")):
            raise SystemExit(_print_error("aborted", 130))
        if isinstance(e, caught("Exit")):
            return e.exit_code
        raise
    return 0


def _click_exception_modules() -> list:
    """typer >= 0.26 vendors click as typer._click, whose exceptions are not click's, and no longer
    installs the click package; older typer uses click itself. Catch whichever of the two exist."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


def _usage_line(e) -> str:
    """click's usage error as one line: its message and where the help is (click prints four lines:
    Usage, Try, a blank line and Error)."""
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None and ctx.command_path else "archc"
    return f"{e.format_message()} (see `{path} --help`)"


def _print_error(message: str, code: int) -> int:
    from rich.console import Console
    from rich.markup import escape

    from archc.errors import one_line

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(one_line(message))}")
    return code


if __name__ == "__main__":
    # `python -m archc.cli`: commands register on archc.cli.app, not on this __main__ copy.
    from archc.cli import main as _main

    sys.exit(_main())
