"""The exported ONNX files and the graph JSON are byte-identical to the committed hashes.

tests/emit_onnx/export_hashes.json was written by scripts/export_hashes.py at main 77cb61c, before
the typed node settings (issue 10): a refactor of the graph or the emitters must change no output
byte. A change that means to change the output regenerates the file and says why in its commit
(the latest: issue 14's logits_start input and archc.position_ids metadata, model.onnx only).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HASHES = json.loads((Path(__file__).parent / "export_hashes.json").read_text())


def _script():
    spec = importlib.util.spec_from_file_location("export_hashes", ROOT / "scripts" / "export_hashes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SCRIPT = _script()
CASES = {label: (base, sets, repl) for label, base, sets, repl in SCRIPT.cases()}


def test_every_case_has_committed_hashes():
    assert sorted(CASES) == sorted(HASHES)


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(CASES))
def test_export_bytes_unchanged(label):
    base, sets, repl = CASES[label]
    got = SCRIPT.case_hashes(base, sets, repl)
    want = HASHES[label]
    changed = sorted(k for k in want if got.get(k) != want[k])
    assert not changed, f"{label}: output bytes changed for {changed}"


def test_hash_compare_catches_a_changed_output():
    """Negative control: a different spec (one more layer) gives different graph and model hashes."""
    base, sets, repl = CASES["llama"]
    got = SCRIPT.case_hashes(base, sets + ["n_layers=3"], repl, exports=[("portable", "fp32", {})])
    assert got["graph.json"] != HASHES["llama"]["graph.json"]
    assert got["portable/fp32"]["model.onnx"] != HASHES["llama"]["portable/fp32"]["model.onnx"]
