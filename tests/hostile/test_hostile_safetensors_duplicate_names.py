"""A safetensors header that gives one tensor name twice is refused with one line naming the file and the
name, exit 2, wherever archc hands a safetensors file on (compile --weights, export-hf --weights, import-hf
and compile of a Hugging Face folder, a training checkpoint). json.loads and safetensors' own reader keep the
last entry without a word: the control below loads such a file with the second entry's shape."""

from __future__ import annotations

import json
import struct

import pytest

from archc.errors import UserError
from hostile_util import ROOT, T, in_process, refused, tiny_hf_dir

NAME = "tok_embedding.weight"


def _archc_weights(path):
    """A safetensors file of the tiny T spec's graph parameters (zeros), under archc's names."""
    import torch
    from safetensors.torch import save_file

    import archc
    from archc.loader import load_spec

    graph = archc.compile(load_spec(ROOT / "specs" / "llama.yaml", [s for s in T if s != "--set"]))
    save_file({full: torch.zeros(shape) for full, shape, _ in graph.params()}, str(path))
    return path


def _header(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[8:8 + n].decode().rstrip(), raw[8 + n:]


def _duplicate(path, name, shape=None):
    """Rewrite `path` with a second entry for `name` at the end of the header: the same bytes (data_offsets),
    read as `shape` (default the first entry's). Returns the path."""
    text, data = _header(path)
    entry = dict(json.loads(text)[name])
    if shape is not None:
        entry["shape"] = shape
    text = text[:-1] + f", {json.dumps(name)}: {json.dumps(entry)}}}"
    h = text.encode() + b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


@pytest.fixture
def weights(tmp_path):
    return _archc_weights(tmp_path / "w.safetensors")


def _name_of_the_embedding(path) -> str:
    names = [k for k in json.loads(_header(path)[0]) if k != "__metadata__"]
    return next(k for k in names if "emb" in k)


def test_the_library_reader_silently_takes_the_last_entry(weights):
    """The control: safetensors opens the file and gives the second entry's shape for the name."""
    from safetensors import safe_open

    name = _name_of_the_embedding(weights)
    first = json.loads(_header(weights)[0])[name]["shape"]
    _duplicate(weights, name, shape=first[::-1])
    f = safe_open(str(weights), framework="pt")
    assert list(f.keys()).count(name) == 1
    assert list(f.get_tensor(name).shape) == first[::-1]


@pytest.mark.parametrize("command", ["compile", "export-hf"])
def test_weights_with_a_name_twice_are_refused(command, weights, tmp_path, capsys):
    name = _name_of_the_embedding(weights)
    _duplicate(weights, name)
    out = tmp_path / "out"
    line = refused(in_process([command, "llama", *T, "--weights", weights, "-o", out], capsys))
    assert f"--weights {weights}: name {json.dumps(name)} appears twice in the safetensors header" in line, line
    assert not out.exists()


def test_the_same_weights_without_the_duplicate_export(weights, tmp_path, capsys):
    """Negative control: the refusal is the duplicate; the file as saved exports."""
    code, _, err = in_process(["export-hf", "llama", *T, "--weights", weights, "-o", tmp_path / "out"], capsys)
    assert code == 0, err


def test_a_training_checkpoint_with_a_name_twice(weights):
    from archc.train.checkpoint import load_model_weights

    assert len(load_model_weights(weights)) > 1  # control: read as saved
    _duplicate(weights, _name_of_the_embedding(weights))
    with pytest.raises(UserError) as e:
        load_model_weights(weights)
    assert str(e.value).startswith(f"{weights}: name ") and "twice" in str(e.value) and "\n" not in str(e.value)


def _hf_dir(tmp_path, names):
    """A Hugging Face folder read by headers only (import-hf): config.json and a header whose entries are `names`."""
    entry = '{"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 0]}'
    return tiny_hf_dir(tmp_path, ("{" + ", ".join(f'"{n}": {entry}' for n in names) + "}").encode())


def test_import_hf_refuses_a_checkpoint_header_with_a_name_twice(tmp_path, capsys):
    q = "model.layers.0.self_attn.q_proj.weight"
    d = _hf_dir(tmp_path, [q, "model.layers.0.self_attn.k_proj.weight", q])
    refused(in_process(["import-hf", d, "-o", tmp_path / "s.yaml"], capsys),
            f'{d / "model.safetensors"}: name "{q}" appears twice in the safetensors header')
    assert not (tmp_path / "s.yaml").exists()
    # negative control: the same header with each name once passes this check and meets the next one (the
    # names the config implies), which reads the header's names
    (tmp_path / "ok").mkdir()
    d2 = _hf_dir(tmp_path / "ok", [q, "model.layers.0.self_attn.k_proj.weight"])
    line = refused(in_process(["import-hf", d2, "-o", tmp_path / "s2.yaml"], capsys), "checkpoint lacks tensors")
    assert "twice" not in line and "q_proj" not in line
