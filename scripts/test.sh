#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs it.
# CI (.ci/run) calls exactly this script; the README's test command is this script.
set -euo pipefail
cd "$(dirname "$0")/.."
# Graphviz renders `archc draw`; Debian/Ubuntu package. Without root or apt, the draw tests that
# need `dot` are skipped with a reason, the rest still run.
if ! command -v dot >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "warning: could not install graphviz"
  else
    echo "note: graphviz's dot not found; install the 'graphviz' package to run the diagram tests"
  fi
fi
# torch pinned to the release the tests use. From PyPI on Linux that is the CUDA build (several GB);
# machines with a pip index or find-links that carry the CPU wheel get that. See README "Installing".
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"
# pytest exits 5 when it collects no tests; that (and any failure) fails this script.
python3 -m pytest -q "$@"
