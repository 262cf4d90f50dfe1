"""A progress bar for long work (writing a model's weights, checking a checkpoint): tensors and bytes
done, rate and ETA, drawn by rich on stderr when stderr is a terminal, and nothing at all otherwise
(logs and pipes get only the command's ordinary lines)."""

from __future__ import annotations

import sys


class TensorProgress:
    """`with TensorProgress("writing weights", n_tensors, n_bytes) as p: ... p.advance(nbytes)`.

    enabled: None draws only when stderr is a terminal; True/False force it (tests, callers)."""

    def __init__(self, what: str, total_tensors: int, total_bytes: int, *, enabled: bool | None = None, console=None):
        self.what, self.total_tensors, self.total_bytes = what, total_tensors, total_bytes
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.console = console
        self._bar = self._task = None
        self.done = 0

    def __enter__(self) -> "TensorProgress":
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._escape = escape
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                             TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             console=self.console or Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self._label(), total=max(self.total_bytes, 1))
        return self

    def _label(self) -> str:
        return self._escape(f"{self.what}: {self.done}/{self.total_tensors} tensors")

    def advance(self, nbytes: int) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes, description=self._label())

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
