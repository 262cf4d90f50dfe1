"""`archc run` as a new user meets it: an explicit --temperature samples, a spec file is named as a
spec, and a bf16 model on the CPU gets a message that does not claim it runs on the CPU."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

T = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
     "--set", "vocab_size=100", "--set", "max_seq_len=64", "--set", "dtype=float32"]


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "fp32"
    from archc.cli import main

    assert main(["compile", "llama", *T, "-o", str(out)]) in (0, None)
    return out


def _ids(capsys, model, *extra) -> list[int]:
    rc, out, err = run_cli(["run", str(model), "--prompt-ids", "1,2,3", "--max-new-tokens", "24", "--device", "cpu", *extra], capsys)
    assert rc == 0, err
    return [int(x) for x in out.strip().split(",")]


def test_explicit_temperature_one_samples(fp32_model, capsys):
    greedy = _ids(capsys, fp32_model)
    assert _ids(capsys, fp32_model) == greedy  # negative control: greedy is deterministic
    sampled = [_ids(capsys, fp32_model, "--temperature", "1.0", "--seed", str(s)) for s in (0, 1)]
    # a random tiny model's next-token distribution is nearly flat over 100 ids: 24 sampled tokens
    # equal to the greedy ones would mean --temperature 1.0 was ignored
    assert all(ids != greedy for ids in sampled)
    assert sampled[0] != sampled[1]
    assert _ids(capsys, fp32_model, "--temperature", "1.0", "--seed", "0") == sampled[0]  # seeded


def test_help_says_when_sampling_happens(capsys):
    rc, out, _ = run_cli(["run", "--help"], capsys)
    assert rc == 0 and "Default: greedy" in " ".join(out.split())


def test_run_on_a_spec_file_says_compile_it_first(tmp_path, capsys):
    spec = tmp_path / "x.yaml"
    spec.write_text("extends: llama\nn_layers: 2\n")
    rc, out, err = run_cli(["run", str(spec), "--prompt-ids", "1,2"], capsys)
    assert rc == 2 and out == ""
    assert "this is a spec" in err and "archc compile" in err and "DecodeError" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_bf16_on_cpu_message_does_not_claim_to_run(tmp_path_factory, capsys, device):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            import torch

            if torch.cuda.is_available() and device == "auto":
                pytest.skip("auto picks CUDA on this machine")
        except ImportError:
            pass
    out = tmp_path_factory.getbasetemp() / "bf16"
    if not out.exists():
        from archc.cli import main

        assert main(["compile", "llama", *T, "--dtype", "bf16", "-o", str(out)]) in (0, None)
    rc, _, err = run_cli(["run", str(out), "--prompt-ids", "1,2", "--device", device], capsys)
    assert rc == 2
    assert "bf16" in err and "--dtype fp32" in err
    assert "running on CPU" not in err
    assert len(err.strip().splitlines()) == 1
