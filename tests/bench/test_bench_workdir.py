"""The bench's ort export folders: what joins their key (archc.bench.harness.ort_parts / ort_model_dir)."""

from __future__ import annotations


def test_ort_kernels_join_the_key_only_when_not_the_default(tmp_path):
    """--kernels archc exports live in their own folder; the default's key (and so every earlier folder) is unchanged."""
    import archc
    from archc.bench.harness import ort_model_dir, ort_parts
    from conftest import tiny_spec

    graph = archc.compile(tiny_spec("llama"))
    default = ort_parts(graph, "cuda", "fp16", "all")
    assert "kernels" not in default and ort_parts(graph, "cuda", "fp16", "all", kernels="onnxruntime") == default
    assert ort_parts(graph, "cuda", "fp16", "all", kernels="archc") == {**default, "kernels": "archc"}
    a = ort_model_dir(tmp_path, graph, "cuda", "fp16", "all")
    b = ort_model_dir(tmp_path, graph, "cuda", "fp16", "all", kernels="archc")
    assert a != b and b.name.startswith(a.name.rsplit("-", 1)[0] + "-kernels-archc")
