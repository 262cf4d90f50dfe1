"""onnxruntime-genai (CPU, fp32) drives archc's exports of every library family and gives archc's tokens.

genai's CPU wheel replaces onnxruntime-gpu's files, so it lives in its own venv (scripts/genai_env.sh,
made by .ci/run); these tests run in the main environment, compute archc's greedy tokens with
`archc.runner.Session` here, and run genai in that venv's python (ARCHC_GENAI_PYTHON) through
tests/genai/genai_driver.py, one subprocess for every model. Without genai they skip, unless
ARCHC_REQUIRE_GENAI=1 (CI) makes that a failure. Specs genai cannot drive (GLM: 2-D positions and a
prefix mask) must be refused by genai with archc's reason. Both logits layouts are checked (genai
reads the last position of `--logits last`'s [batch, 1, vocab] as well as of the contract's full
logits), and cuda-target exports with genai's shared past/present buffer, on genai's CPU provider."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import archc
from archc.runner import Session
from conftest import LIBRARY, genai_python_or_skip, tiny_spec
from exporters.onnx_export import export, genai_unsupported

pytestmark = [pytest.mark.genai, pytest.mark.slow]

DRIVER = Path(__file__).with_name("genai_driver.py")
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
N_NEW = 12
EOS = 2  # genai_config's placeholder eos for a spec without a tokenizer: genai stops there
# (family, variant): every library spec with the contract's full logits; --logits last; and the cuda
# target (GroupQueryAttention's packed layout, one shared past/present buffer: genai's
# past_present_share_buffer) for the GQA families, run by genai on the CPU
CASES = ([(name, "all") for name in LIBRARY] + [("llama", "last"), ("gpt2", "last")]
         + [("llama", "cuda"), ("mistral", "cuda"), ("palm", "cuda")])


@pytest.fixture(scope="module")
def genai_runs(tmp_path_factory):
    py = genai_python_or_skip()
    root = tmp_path_factory.mktemp("genai")
    jobs, want = [], {}
    for name, variant in CASES:
        graph = archc.compile(tiny_spec(name))
        d = root / f"{name}-{variant}"
        if variant == "cuda":  # the cuda target's fused ops in fp32 (their CPU kernels), past = present shared
            export(graph, d, target="cuda", fused_fp32=True)
        else:
            export(graph, d, logits=variant)
        s = Session(d, device="cpu")
        want[(name, variant)] = ([s.generate([p], N_NEW).ids[0] for p in PROMPTS], genai_unsupported(graph))
        jobs.append({"model_dir": str(d), "prompts": PROMPTS, "max_new_tokens": N_NEW, "cpu": True})
    cases = CASES
    proc = subprocess.run([py, str(DRIVER)], input=json.dumps({"jobs": jobs}), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    return {case: (want[case], res) for case, res in zip(cases, got)}


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_genai_gives_archc_tokens(genai_runs, case):
    (archc_tokens, unsupported), res = genai_runs[case]
    if unsupported is not None:
        assert "error" in res, f"genai ran a model archc marks as not drivable ({unsupported})"
        assert "Unsupported model_type" in res["error"] and unsupported in res["error"]
        return
    assert "error" not in res, res.get("error")
    for want, got in zip(archc_tokens, res["tokens"]):
        want = _until_eos(want)
        assert got == want
        assert len(got) >= 2  # the comparison covers decode steps, not only the prompt step


def test_genai_comparison_can_fail(genai_runs):
    """Negative control: another family's tokens for the same prompts differ, so equality is not vacuous."""
    (a, _), _ = genai_runs[("llama", "all")]
    (b, _), _ = genai_runs[("gpt2", "all")]
    assert a != b
