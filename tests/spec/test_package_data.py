"""The spec library and the JSON Schema ship inside the package, and the Python API finds library
specs by name as the CLI does."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import archc
from archc.errors import SpecError
from archc.loader import library_dir, library_specs

ROOT = Path(__file__).resolve().parents[2]


def test_load_spec_resolves_library_names():
    assert archc.load_spec("llama").name == "llama-7b"
    assert archc.load_spec("gpt2", ["n_layers=2"]).n_layers == 2


def test_load_spec_still_reports_a_missing_file():
    with pytest.raises(SpecError, match="no such file"):
        archc.load_spec("no-such-spec-anywhere")


def test_library_is_package_data():
    """The library is read through the archc package (importlib.resources), not beside the checkout."""
    from importlib.resources import files

    assert library_dir() == Path(str(files("archc").joinpath("specs")))
    assert (library_dir() / "archc-spec.schema.json").is_file()
    names = {p.stem for p in library_specs()}
    assert {"llama", "gpt2", "palm", "glm", "bloom"} <= names
    # one source of truth: the package's folder is the top-level specs/ the README names
    assert library_dir().resolve() == (ROOT / "specs").resolve()


@pytest.mark.slow
def test_built_wheel_carries_the_library_and_works_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    subprocess.run(f"tar --null -T - -cf - | tar -xf - -C {src}", shell=True, cwd=ROOT, input=files, check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (whl,) = (tmp_path / "dist").glob("archc-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for spec in library_specs():
        assert f"archc/specs/{spec.name}" in names
    assert "archc/specs/archc-spec.schema.json" in names
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(whl)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    code = ("import archc, sys; assert archc.__file__.startswith(sys.argv[1]), archc.__file__; "
            "print(archc.load_spec('llama').name)")
    r = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=run_dir, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "llama-7b", r.stderr
    r = subprocess.run([sys.executable, "-m", "archc.cli", "validate", "llama", "gpt2"], capture_output=True, text=True,
                       cwd=run_dir, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok ") == 2
