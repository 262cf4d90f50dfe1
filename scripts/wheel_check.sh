#!/usr/bin/env bash
# Builds archc's wheel and proves it works on its own: a fresh venv with the runtime dependencies
# only (no test extras, so nothing they pull in -- click, transformers -- can hide a missing one),
# then from outside the checkout: validate and show library specs by name, the Python API's
# library lookup, a usage error (one line, exit 2), and a tiny compile + run.
# .ci/run calls this after scripts/test.sh. About 1-3 minutes, most of it installing torch and
# onnxruntime from pip's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d "${TMPDIR:-/tmp}/archc-wheel-check-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
py=${PYTHON:-python3}

echo "wheel check: building the wheel"
# From a copy of the working tree's files (tracked and untracked, not ignored; symlinks kept), so the
# build's build/ and *.egg-info stay out of the checkout.
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$tmp/src"
"$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp/dist" "$tmp/src"
whl=$(ls "$tmp"/dist/archc-*.whl)
"$py" -m venv "$tmp/venv"
vpy="$tmp/venv/bin/python"
# The same torch build the test environment has (its CPU wheel where that is what was installed),
# so this takes it from pip's cache instead of pulling PyPI's default CUDA build.
torch_req=$("$py" -c 'import torch; print("torch==" + torch.__version__)' 2>/dev/null || echo "torch==2.13.0")
echo "wheel check: installing $(basename "$whl") and $torch_req into a fresh venv"
"$vpy" -m pip install -q --disable-pip-version-check "$torch_req" "$whl"

cd "$tmp"  # nothing from the checkout on sys.path
archc="$tmp/venv/bin/archc"
"$vpy" -c 'import archc, sys; assert "site-packages" in archc.__file__, archc.__file__; print("archc from", archc.__file__)'
"$archc" validate llama palm glm
"$archc" show gpt2 > show.txt && grep -q "124,439,808" show.txt
"$vpy" -c 'import archc; s = archc.load_spec("llama"); assert s.name == "llama-7b", s.name; print("load_spec(llama):", s.name)'
"$archc" schema > schema.json && "$vpy" -c 'import json, archc.loader as l; assert json.load(open("schema.json")) == json.load(open(l.library_dir() / "archc-spec.schema.json"))'
set +e
"$archc" validate 2> usage.txt; rc=$?
set -e
if [ "$rc" != 2 ] || [ "$(grep -c . usage.txt)" != 1 ]; then
  echo "wheel check: a usage error should be one line with exit 2, got exit $rc:"; cat usage.txt; exit 1
fi
"$archc" compile llama --set n_layers=2 --set d_model=64 --set attention.n_heads=4 --set mlp.d_ff=128 \
  --set vocab_size=100 --set max_seq_len=64 --set dtype=float32 -o model
"$archc" run model --prompt-ids 1,2,3 --max-new-tokens 4 --device cpu > ids.txt
[ "$(tr "," "\n" < ids.txt | grep -c .)" = 4 ] || { echo "wheel check: run printed $(cat ids.txt)"; exit 1; }
echo "wheel check: ok"
