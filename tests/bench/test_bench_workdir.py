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
    from archc.bench.workdir import ort_ops_digest

    assert ort_parts(graph, "cuda", "fp16", "all", kernels="archc") == {**default, "kernels": "archc", "ort_ops": ort_ops_digest()}
    a = ort_model_dir(tmp_path, graph, "cuda", "fp16", "all")
    b = ort_model_dir(tmp_path, graph, "cuda", "fp16", "all", kernels="archc")
    assert a != b and b.name.startswith(a.name.rsplit("-", 1)[0] + "-kernels-archc")


def test_archc_kernels_key_follows_the_op_library(tmp_path, monkeypatch):
    """A --kernels archc export copies the op library into its folder, so the library's sources (or the
    ARCHC_ORT_OPS_LIB file used instead) join its key: the key read archc's .py files only, so after an edit of the
    CUDA kernel `archc bench` reused the folder holding the old library."""
    import archc
    from archc.bench import workdir
    from archc.bench.harness import ort_parts
    from conftest import tiny_spec

    ops = tmp_path / "ort_ops"
    ops.mkdir()
    cu = ops / "k.cu"
    cu.write_text("// v1\n")
    monkeypatch.setattr(workdir, "_ort_ops_dir", lambda: ops)
    monkeypatch.delenv("ARCHC_ORT_OPS_LIB", raising=False)
    graph = archc.compile(tiny_spec("llama"))
    k1 = ort_parts(graph, "cuda", "fp16", "all", kernels="archc")
    assert ort_parts(graph, "cuda", "fp16", "all", kernels="archc") == k1  # the control: same inputs, same key
    (ops / "notes.txt").write_text("not a source")
    assert ort_parts(graph, "cuda", "fp16", "all", kernels="archc") == k1
    cu.write_text("// v2\n")
    k2 = ort_parts(graph, "cuda", "fp16", "all", kernels="archc")
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"one")
    monkeypatch.setenv("ARCHC_ORT_OPS_LIB", str(lib))
    k3 = ort_parts(graph, "cuda", "fp16", "all", kernels="archc")
    lib.write_bytes(b"two")
    keys = [k1, k2, k3, ort_parts(graph, "cuda", "fp16", "all", kernels="archc")]
    assert len({k["ort_ops"] for k in keys}) == 4 and all({**k, "ort_ops": 0} == {**k1, "ort_ops": 0} for k in keys)
