"""A spec that extends another does not inherit the base's labels: its reference (paper and published
parameter count) and description belong to the base file."""

from __future__ import annotations

from archc.loader import load_spec
from tests.conftest import run_cli


def test_extending_spec_drops_the_base_reference(tmp_path, capsys):
    p = tmp_path / "small.yaml"
    p.write_text("extends: llama\nname: small\nn_layers: 8\n")
    assert load_spec("llama").reference  # the base has one (negative control)
    s = load_spec(p)
    assert s.reference == "" and s.description == ""
    rc, out, _ = run_cli(["show", str(p)], capsys)
    assert rc == 0
    assert "6,738,415,616" not in out.replace("\n", " ") and "Touvron" not in out


def test_a_spec_states_its_own_reference(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("extends: llama\nname: mine\nreference: my notes\n")
    assert load_spec(p).reference == "my notes"
    assert "Mistral 7B" in load_spec("mistral").reference  # library specs that extend llama say their own


def test_new_from_llama_has_no_llama_reference(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(["new", "tiny", "--from", "llama", "--set", "n_layers=8"], capsys)
    assert rc == 0, err
    assert load_spec(tmp_path / "tiny.yaml").reference == ""
