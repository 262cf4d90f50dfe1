"""Bench(kernels=...): checked like `archc compile --kernels`, never silently replaced by the default."""

from __future__ import annotations

import pytest

import archc
from archc.loader import load_spec
from archc.bench.harness import Bench
from archc.errors import UserError
from tests.conftest import SPECS, tiny_sets


def _graph():
    return archc.compile(load_spec(SPECS / "llama.yaml", tiny_sets(SPECS / "llama.yaml")))


def test_kernels_archc_on_the_cpu_is_refused_not_dropped():
    # it was accepted and the ort backend exported with onnxruntime's ops, while genai_compare's report said archc
    with pytest.raises(UserError, match="--kernels archc: needs --target cuda"):
        Bench(_graph(), dtype="fp32", device="cpu", backends=["ort"], kernels="archc")


def test_unknown_kernels_is_one_line():
    with pytest.raises(UserError, match="--kernels bogus: choose one of onnxruntime, archc"):
        Bench(_graph(), dtype="fp32", device="cpu", backends=["ort"], kernels="bogus")


def test_default_kernels_on_the_cpu_is_accepted():  # negative control
    assert Bench(_graph(), dtype="fp32", device="cpu", backends=["ort"]).kernels == "onnxruntime"
