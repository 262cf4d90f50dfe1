"""genai_config.json for specs onnxruntime-genai cannot drive: `archc compile` says so in one line and
the config's model type names the reason (genai refuses an unknown type with its name, which
tests/genai checks against genai itself). Drivable specs keep genai's "llama" type."""

from __future__ import annotations

import json

from conftest import run_cli, tiny_sets, SPECS


def _compile(name, tmp_path, capsys):
    d = tmp_path / name
    argv = ["compile", name, "-o", str(d)]
    for s in tiny_sets(SPECS / f"{name}.yaml"):
        argv += ["--set", s]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0, err
    return json.loads((d / "genai_config.json").read_text())["model"]["type"], out


def test_glm_is_marked_not_for_genai(tmp_path, capsys):
    typ, out = _compile("glm", tmp_path, capsys)
    assert typ.startswith("not-for-onnxruntime-genai: ") and "2-D positions" in typ and "prefix_len" in typ
    lines = [line for line in out.splitlines() if "onnxruntime-genai" in line]
    assert len(lines) == 1 and "2-D positions" in lines[0]


def test_llama_stays_genai_llama(tmp_path, capsys):
    typ, out = _compile("llama", tmp_path, capsys)
    assert typ == "llama" and "onnxruntime-genai" not in out
