"""archc's onnxruntime op library for the tests: the CPU build (g++), made once per test session.

Skipped, with the reason, only where it cannot be built here: no g++, or no way to fetch onnxruntime's headers
(no network and no ARCHC_ORT_INCLUDE). CI has both."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest


@functools.cache
def _build() -> tuple[Path | None, str | None]:
    from archc.errors import UserError
    from exporters.ort_ops.build import Kind, build

    try:
        return build(Kind.cpu), None
    except UserError as e:
        return None, str(e)


def cpu_library() -> Path:
    lib, why = _build()
    if lib is None:
        pytest.skip(f"archc's onnxruntime op library cannot be built here: {why}")
    return lib
