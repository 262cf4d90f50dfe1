"""benchmarks/genai_compare.py --kernels archc on the CPU: refused in one line before any work. It was accepted, the
ort rows exported with onnxruntime's ops while the report said --kernels archc; with Bench now refusing it, the
refusal came as a traceback after the tiny checkpoint was written."""

from __future__ import annotations

import pytest

from benchmarks import genai_compare


def test_kernels_archc_needs_cuda(tmp_path, capsys, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("measured before the arguments were checked")

    monkeypatch.setattr(genai_compare, "measure", no_work)
    out = tmp_path / "c.json"
    with pytest.raises(SystemExit) as e:
        genai_compare.main([str(out), "--tiny", "--device", "cpu", "--kernels", "archc", "--work-dir", str(tmp_path / "w")])
    assert e.value.code == 2 and not out.exists()
    assert "--kernels archc needs --device cuda" in capsys.readouterr().err


def test_default_kernels_on_the_cpu_reaches_measure(tmp_path, monkeypatch):  # the control
    called = []
    monkeypatch.setattr(genai_compare, "measure", lambda *a, **k: called.append(k) or {"configs": []})
    monkeypatch.setattr(genai_compare, "render", lambda r: "")
    genai_compare.main([str(tmp_path / "c.json"), "--tiny", "--device", "cpu"])
    assert called and called[0]["kernels"] == "onnxruntime"
