"""CUDA kernel events of a few calls, from torch's profiler (CUPTI): shared by the GPU probes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def kernel_events(call: Callable[[], object], runs: int) -> list[dict]:
    """Run `call` `runs` times under the profiler (CUDA activity only, synchronised at the end) and return
    the chrome-trace events of category "kernel" (each has "name" and "dur" in µs)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            call()
        torch.cuda.synchronize()
    fd, name = tempfile.mkstemp(prefix=f"kernel_trace_{os.getpid()}_", suffix=".json")
    os.close(fd)
    trace = Path(name)
    try:
        prof.export_chrome_trace(str(trace))
        return [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "kernel"]
    finally:
        trace.unlink(missing_ok=True)
