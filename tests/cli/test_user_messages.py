"""Messages that named the wrong thing: a non-mapping rope_scaling, demo's prompt, a --set whose
field path is not a field name (which `new` wrote as two keys)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

HF = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "intermediate_size": 128, "max_position_embeddings": 64}


@pytest.mark.parametrize("value", ["weird", ["linear"], 3])
def test_rope_scaling_not_a_mapping(tmp_path, capsys, value):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**HF, "rope_scaling": value}))
    rc, _, err = run_cli(["import-hf", str(d), "-o", str(tmp_path / "s.yaml")], capsys)
    assert rc == 2
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert "rope_scaling=" in line and "rope_parameters" not in line and "not a mapping" in line
    assert line.rstrip().endswith("remove it")  # a whole sentence
    assert not (tmp_path / "s.yaml").exists()


def test_per_layer_type_rope_message_is_a_whole_sentence(tmp_path, capsys):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**HF, "rope_parameters": {"full_attention": {"rope_type": "default"}}}))
    rc, _, err = run_cli(["import-hf", str(d), "-o", str(tmp_path / "s.yaml")], capsys)
    assert rc == 2 and "rope_parameters=" in err and "one RoPE for all layers" in err
    assert not err.strip().endswith(" is")


def test_demo_with_a_small_vocabulary_runs(capsys):
    rc, out, err = run_cli(["demo", "--set", "vocab_size=10", "--max-new-tokens", "3", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "--prompt-ids" not in err and "agree token for token" in out


def test_demo_prompt_too_long_names_demo_options(capsys):
    rc, _, err = run_cli(["demo", "--set", "max_seq_len=8", "--device", "cpu"], capsys)
    assert rc == 2
    assert "--prompt-ids" not in err and "--max-new-tokens" in err and "max_seq_len" in err


@pytest.mark.parametrize("command", ["new", "validate"])
def test_set_with_a_newline_in_the_field_is_refused(tmp_path, capsys, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = "n_layers: 2\nvocab_size=5"
    argv = ["new", "nn", "--from", "llama", "--set", bad] if command == "new" else ["validate", "llama", "--set", bad]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2
    assert "not a field name" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nn.yaml").exists()
