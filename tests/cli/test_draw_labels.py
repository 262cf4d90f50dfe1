"""Diagrams: a sliding window is named the same way on the mask node and the attention nodes, and a
diff diagram that highlights components says what the highlight means."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_cli


def _labels(dot: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'^\s*(\w+) \[label="((?:[^"\\]|\\.)*)"', dot, re.M)}


def test_sliding_window_label_is_consistent(tmp_path, capsys):
    out = tmp_path / "m.dot"
    rc, _, err = run_cli(["draw", "mistral", "-o", str(out), "--format", "dot"], capsys)
    assert rc == 0, err
    labels = _labels(out.read_text())
    assert "window 4096" in labels["mask"]
    attn = [v for k, v in labels.items() if k.endswith("_attn")]
    assert attn and all("causal mask, window 4096" in v for v in attn)


def test_no_window_no_window_words(tmp_path, capsys):
    out = tmp_path / "l.dot"
    rc, _, _ = run_cli(["draw", "llama", "-o", str(out), "--format", "dot"], capsys)
    assert rc == 0
    assert "window" not in out.read_text()


@pytest.mark.parametrize("suffix", ["dot", "mmd"])
def test_diff_draw_has_a_legend(tmp_path, capsys, suffix):
    out = tmp_path / f"d.{suffix}"
    rc, _, err = run_cli(["diff", "llama", "mistral", "--draw", str(out)], capsys)
    assert rc == 1, err
    text = out.read_text()
    assert "legend" in text and "highlighted" in text and "differs" in text
    plain = tmp_path / f"p.{suffix}"
    rc, _, _ = run_cli(["draw", "llama", "-o", str(plain)], capsys)
    assert rc == 0 and "legend" not in plain.read_text()  # nothing highlighted, no legend
