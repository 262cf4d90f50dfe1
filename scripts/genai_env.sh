#!/usr/bin/env bash
# Makes the onnxruntime-genai venv that tests/genai runs genai in, and prints its python's path.
# genai's CPU wheel depends on the CPU `onnxruntime`, whose files replace onnxruntime-gpu's in one
# environment (README "onnxruntime-genai"), so it gets its own venv; genai needs nothing of archc
# there (archc's side of each comparison runs in the main environment). genai's model builder (the
# `genai` backend of `archc bench`) also needs onnx-ir, torch, transformers and tokenizers: the venv sees the
# main environment's packages (--system-site-packages) below its own, so its CPU onnxruntime wins the
# `onnxruntime` import there and torch/transformers come from the main environment.
# Usage: ARCHC_GENAI_PYTHON=$(bash scripts/genai_env.sh [DIR])   (default DIR: .venv-genai)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv-genai}
GENAI_VERSION=0.18.0  # the release the issue measured; pip index versions onnxruntime-genai lists it
ONNX_IR_VERSION=1.1.0  # the builder's graph library; the same wheel travels to the GPU machine
if [ ! -x "$dir/bin/python" ]; then
  python3 -m venv --system-site-packages "$dir" >&2
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check "onnxruntime-genai==$GENAI_VERSION" "onnx-ir==$ONNX_IR_VERSION" >&2
"$dir/bin/python" -c "import onnxruntime_genai" >&2
echo "$(cd "$dir" && pwd)/bin/python"
