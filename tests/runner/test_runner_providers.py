"""The CUDA provider options the runner asks for, per model (checked without a GPU: the session factory
is replaced by one that records its providers and opens the model on the CPU). Models with a
concatenated cache (MultiHeadAttention / ONNX Attention) get sdpa_kernel without cuDNN flash attention,
which plans a kernel per new sequence length (measured on an H200: the first generate 12.5 s -> 0.88 s);
shared-cache (GroupQueryAttention) models keep the provider's defaults; explicit cuda_options win."""

from __future__ import annotations

import pytest

import archc
from archc import runner
from archc.runner import providers
from conftest import tiny_spec
from exporters.onnx_export import export


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prov")
    for name in ("llama", "bloom"):
        export(archc.compile(tiny_spec(name)), root / name, target="cuda", fused_fp32=True)
    return root


@pytest.fixture
def recorded(monkeypatch):
    seen = []
    real = providers._session

    def fake_session(path, providers, **kw):
        seen.append(providers)
        return real(path, ["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(providers, "_session", fake_session)  # where open_session reads them
    monkeypatch.setattr(providers, "choose_providers", lambda device: ([("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], None))
    return seen


def _cuda_opts(seen):
    return [p[0][1] for p in seen if isinstance(p[0], tuple)]


def test_concat_cache_model_leaves_out_cudnn_flash(models, recorded):
    runner.open_session(models / "bloom", device="auto", cuda_graph=True)
    (opts,) = _cuda_opts(recorded)  # no graph attempt: the concatenated cache changes shape every step
    assert opts["sdpa_kernel"] == str(runner.CONCAT_CACHE_SDPA_KERNEL) and not int(opts["sdpa_kernel"]) & 8


def test_shared_cache_model_keeps_defaults(models, recorded):
    runner.open_session(models / "llama", device="auto", cuda_graph=True)
    opts = _cuda_opts(recorded)
    assert opts and all("sdpa_kernel" not in o for o in opts) and opts[0]["enable_cuda_graph"] == "1"


def test_explicit_options_win(models, recorded):
    runner.open_session(models / "bloom", device="auto", cuda_options={"sdpa_kernel": 8})
    assert _cuda_opts(recorded)[0]["sdpa_kernel"] == "8"
