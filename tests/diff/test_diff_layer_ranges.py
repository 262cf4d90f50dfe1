"""`archc diff --format json` gives a change's layers as [first, last] ranges (archc-diff/2), the
ranges the text says: the output and the work stay the same size whatever n_layers is (archc-diff/1
listed every index: 1e6 numbers at a million layers, and at 1e12 layers it could not finish)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archc.diff import layer_ranges

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "diff-schema.json").read_text())
BOUND = 2 * 2**30  # address space of the child: a list of n_layers ints would need far more


def _diff_json(*sets: str) -> dict:
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); from archc.cli import main; "
            "sys.exit(main(sys.argv[1:]))" % (BOUND, BOUND))
    p = subprocess.run([sys.executable, "-c", code, "diff", "llama", "llama", *sets, "--format", "json"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return p.stdout


@pytest.mark.parametrize("n", [48, 2**20])  # 2^20: the most layers a spec may have (archc/spec.py MAX_LAYERS)
def test_json_layers_are_ranges_and_small(n):
    out = _diff_json("--set", f"n_layers={n}", "--set-b", "norm.placement=post")
    assert len(out) < 20_000, len(out)  # the same few kB at 48 and at 2^20 layers
    data = json.loads(out)
    assert data["schema"] == "archc-diff/2"
    inside = [c for c in data["structure"] if c["layers"] is not None]
    assert inside and all(c["layers"] == [[0, n - 1]] and c["where"] == f"in all {n} layers" for c in inside), inside
    import jsonschema  # a test dependency (pyproject [test])

    jsonschema.Draft202012Validator(SCHEMA).validate(data)


def test_ranges_say_what_the_text_says():
    # light graph: 4 layers compared, 10 in the spec; a range reaching the last compared layer runs on
    assert layer_ranges([0, 1, 2, 3], 4, 10) == [(0, 9)]
    assert layer_ranges([0, 2, 3], 4, 10) == [(0, 0), (2, 9)]
    assert layer_ranges([1], 4, 10) == [(1, 1)]  # negative control: a change not in the last compared layer stays put
    assert layer_ranges([0, 1, 5, 7, 8], 9, 9) == [(0, 1), (5, 5), (7, 8)]
    from archc.diff import _ranges

    assert _ranges([(0, 1), (5, 5), (7, 999_999)]) == "0-1, 5, 7-999999"


def test_schema_rejects_index_lists():
    """Negative control for the schema itself: archc-diff/1's flat index list no longer validates."""
    import jsonschema

    change = SCHEMA["$defs"]["change"]
    v = jsonschema.Draft202012Validator({**change, "$defs": SCHEMA["$defs"]})
    good = {"where": "in all 2 layers", "layers": [[0, 1]], "component": "c", "aspect": "x", "a": "a", "b": "b", "text": "t", "roles": []}
    assert v.is_valid(good)
    assert not v.is_valid(dict(good, layers=[0, 1]))
