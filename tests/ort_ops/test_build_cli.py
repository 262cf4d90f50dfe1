"""python3 -m exporters.ort_ops.build: every refusal of its arguments comes before any build or copy."""

from __future__ import annotations

import pytest

from exporters.ort_ops import build


def _no_build(kind):
    raise AssertionError("built before the arguments were checked")


@pytest.mark.parametrize("force", [False, True])
def test_existing_headers_out_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, force):
    monkeypatch.setattr(build, "build", _no_build if not force else lambda kind: lib)
    monkeypatch.setattr(build, "headers", lambda: src)
    lib, src = tmp_path / "built.so", tmp_path / "inc"
    lib.write_bytes(b"lib")
    src.mkdir()
    (src / "onnxruntime_cxx_api.h").write_text("// new\n")
    hdr = tmp_path / "hdr"
    hdr.mkdir()
    (hdr / "mine.h").write_text("// the user's\n")
    out = tmp_path / "out.so"
    rc = build.main(["--cpu", "-o", str(out), "--headers-out", str(hdr)] + (["--force"] if force else []))
    if not force:
        # it built and wrote -o, then failed on the folder (FileExistsError) with exit 2 and -o left behind
        assert rc == 2 and not out.exists()
        err = capsys.readouterr().err
        assert "--headers-out" in err and "--force" in err and len(err.strip().splitlines()) == 1
    else:  # the control: with --force both are written
        assert rc == 0 and out.read_bytes() == b"lib" and (hdr / "onnxruntime_cxx_api.h").exists()
    assert (hdr / "mine.h").read_text() == "// the user's\n"


@pytest.mark.parametrize("ops,refused", [("GatedMLP,GatedMLPNBits", "without Linear, LinearNBits"), (",".join(build.OPS), None)])
def test_a_prebuilt_library_without_the_ops_is_refused(tmp_path, monkeypatch, ops, refused):
    from archc.errors import UserError

    lib = tmp_path / "old.so"
    lib.write_bytes(b"lib")
    monkeypatch.setenv(build.ENV_LIB, str(lib))
    monkeypatch.setattr(build, "info", lambda p: {"name": "archc-ort-ops", "version": "1", "ops": ops, "kernels": "cpu,cuda"})
    if refused is None:  # the control: every op there
        assert build.library(build.Kind.cuda) == lib
        return
    with pytest.raises(UserError, match=rf"old\.so: an older archc op library \(version 1\) {refused}; rebuild it"):
        build.library(build.Kind.cuda)
