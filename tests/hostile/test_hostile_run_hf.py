"""6.9 `run` and 6.10 `import-hf` on damaged or hostile files: one line, exit 2, nothing allocated
in proportion to a number the file claims."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest

from hostile_util import T, in_process, refused

CFG = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
       "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A learned-position model (its table has max_seq_len = 64 rows)."""
    from archc.cli import main

    d = tmp_path_factory.mktemp("run") / "g"
    try:
        main(["compile", "gpt2", *T, "-o", str(d)])
    except SystemExit as e:
        assert not e.code
    return d


def _run(d, capsys, *extra):
    return in_process(["run", d, "--prompt-ids", "1,2,3", "--device", "cpu", *extra], capsys)


@pytest.mark.parametrize("content, needle", [
    ("nope", "not valid JSON"),
    ("[1]", "context_length"),
    ('{"model": {"context_length": "abc"}}', "context_length"),
    ('{"model": {"context_length": true}}', "context_length"),
    ('{"model": []}', "context_length"),
])
def test_damaged_genai_config(content, needle, gpt2_dir, capsys):
    cfg = gpt2_dir / "genai_config.json"
    saved = cfg.read_bytes()
    try:
        cfg.write_text(content)
        refused(_run(gpt2_dir, capsys), needle)
        cfg.unlink()
        os.symlink("/dev/zero", cfg)
        refused(_run(gpt2_dir, capsys), "character device")
    finally:
        cfg.unlink()
        cfg.write_bytes(saved)


def test_temperature_nan(gpt2_dir, capsys):
    refused(_run(gpt2_dir, capsys, "--temperature", "nan"), "--temperature")
    refused(_run(gpt2_dir, capsys, "--top-p", "nan"), "--top-p")


def test_negative_sampling_seed(gpt2_dir, capsys):
    """Was numpy's 'expected non-negative integer' traceback (exit 1). A seed past 64 bits still samples."""
    refused(_run(gpt2_dir, capsys, "--temperature", "1", "--seed", "-1"), "--seed -1: give a non-negative integer")
    code, out, err = _run(gpt2_dir, capsys, "--temperature", "1", "--seed", str(10**30))
    assert code == 0 and len(out.split(",")) == 16, err


def test_context_comes_from_the_model_itself(gpt2_dir, capsys):
    """Without genai_config.json, a learned-position model past its table gets archc's message (was
    onnxruntime's Gather error), and a huge --max-new-tokens is refused before anything is reserved."""
    cfg = gpt2_dir / "genai_config.json"
    saved = cfg.read_bytes()
    cfg.unlink()
    try:
        refused(_run(gpt2_dir, capsys, "--max-new-tokens", "62"), "max_seq_len 64")
        refused(_run(gpt2_dir, capsys, "--max-new-tokens", "1000000000"), "max_seq_len 64")
        code, out, err = _run(gpt2_dir, capsys, "--max-new-tokens", "61")  # 3 + 61 = 64 fits (negative control)
        assert code == 0, err
        # a genai_config.json may lower the limit, never raise it past the model's
        cfg.write_text(json.dumps({"model": {"context_length": 10**6}}))
        refused(_run(gpt2_dir, capsys, "--max-new-tokens", "62"), "64")
    finally:
        cfg.write_bytes(saved)


# ---- import-hf -------------------------------------------------------------------------------

@pytest.fixture
def hf(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CFG))
    return d


def _import(hf, capsys):
    return in_process(["import-hf", hf, "-o", hf.parent / "s.yaml"], capsys)


@pytest.mark.parametrize("model_type", [["llama"], {"a": 1}, 3])
def test_model_type_not_a_string(model_type, hf, capsys):
    (hf / "config.json").write_text(json.dumps({**CFG, "model_type": model_type}))
    refused(_import(hf, capsys), "model_type must be a string")


def _safetensors(path, header):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h)


@pytest.mark.parametrize("header, needle", [
    ([1, 2], "not a JSON object"),
    ({"model.embed_tokens.weight": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 0]}}, "non-negative"),
    ({"model.embed_tokens.weight": {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 0]}}, "non-negative"),
    ({"model.embed_tokens.weight": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}}, "non-negative"),
    ({"model.embed_tokens.weight": {"dtype": "F32", "shape": [10**12, 10**12], "data_offsets": [0, 0]}}, "more values"),
    ({"model.embed_tokens.weight": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}, "dtype"),
    ({"model.embed_tokens.weight": [1]}, "dtype"),
])
def test_hostile_safetensors_headers(header, needle, hf, capsys):
    _safetensors(hf / "model.safetensors", header)
    refused(_import(hf, capsys), needle)
    refused(in_process(["compile", hf, "-o", hf.parent / "m"], capsys), needle)  # the full read checks first too


@pytest.mark.parametrize("index", [{"weight_map": [1]}, {"weight_map": {"a": 1}}, [1], {"weight_map": {"a": "../x"}}])
def test_hostile_index(index, hf, capsys):
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(_import(hf, capsys), "weight_map")


def test_pickle_refusal_is_one_line_and_runs_nothing(hf, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (hf / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with _no_warning():
        line = refused(_import(hf, capsys), "weights_only refused it", "no code from the file ran")
    assert not marker.exists()
    (hf / "pytorch_model.bin").write_bytes(b"garbage")
    refused(_import(hf, capsys), "pytorch_model.bin")
    assert "Please file an issue" not in line


class _no_warning:
    def __enter__(self):
        import warnings

        self.cm = warnings.catch_warnings(record=True)
        self.seen = self.cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        assert not [w for w in self.seen if issubclass(w.category, UserWarning)], [str(w.message) for w in self.seen]
        return False


@pytest.mark.parametrize("option", [["--temperature", "nan"], ["--top-k", "0"], ["--top-p", "2"], ["--seed", "-1"]])
def test_sampling_options_are_checked_before_the_model_opens(tmp_path, capsys, option):
    """In a folder with no model the bad option is what is named (it used to come after the session's notes, the
    "cuda unavailable" line on a CPU box, and after the model's load time). Negative control: with good
    options the same folder is refused for its missing model."""
    refused(in_process(["run", tmp_path, "--prompt-ids", "1", *option], capsys), option[0])
    refused(in_process(["run", tmp_path, "--prompt-ids", "1", "--temperature", "0.7"], capsys), "no model.onnx here")
