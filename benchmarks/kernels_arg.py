"""`--kernels onnxruntime|archc` as the GPU scripts take it: the export's `archc compile --kernels`, refused off the
cuda device in one line before any work (archc's ops are for the cuda target).

The choices are spelled out rather than read from exporters.onnx_export.Kernels, which would import onnx into
parents that only orchestrate; tests/bench/test_ab_decode_errors.py holds them equal to the enum."""

from __future__ import annotations

import argparse
import sys

KERNELS = ("onnxruntime", "archc")


def add_kernels(ap: argparse.ArgumentParser, whose: str = "the export's") -> None:
    ap.add_argument("--kernels", default="onnxruntime", choices=KERNELS,
                    help=f"{whose} `archc compile --kernels` (archc: archc's own CUDA ops where they fit, the library from "
                         "ARCHC_ORT_OPS_LIB, else built with nvcc; needs --device cuda)")


def refuse_archc_off_cuda(ap: argparse.ArgumentParser, kernels: str, device: str) -> None:
    if kernels == "archc" and device != "cuda":
        print(f"{ap.prog}: --kernels archc needs --device cuda (archc's ops are for the cuda target), not --device {device}",
              file=sys.stderr)
        raise SystemExit(2)
