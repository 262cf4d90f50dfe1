#!/usr/bin/env bash
# Makes the onnxruntime-genai venv that tests/genai runs genai in, and prints its python's path.
# genai's CPU wheel depends on the CPU `onnxruntime`, whose files replace onnxruntime-gpu's in one
# environment (README "onnxruntime-genai"), so it gets its own venv; genai needs nothing of archc
# there (archc's side of each comparison runs in the main environment).
# Usage: ARCHC_GENAI_PYTHON=$(bash scripts/genai_env.sh [DIR])   (default DIR: .venv-genai)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv-genai}
GENAI_VERSION=0.18.0  # the release the issue measured; pip index versions onnxruntime-genai lists it
if [ ! -x "$dir/bin/python" ]; then
  python3 -m venv "$dir" >&2
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check "onnxruntime-genai==$GENAI_VERSION" >&2
"$dir/bin/python" -c "import onnxruntime_genai" >&2
echo "$(cd "$dir" && pwd)/bin/python"
