"""The benchmark scripts (standard set, A/B runs, profiles) and their results.

Run them as modules from the repository root, e.g. `python3 -m benchmarks.run_standard --plan`:
the root then is on the import path, so `archc`, `exporters` and `benchmarks.standard` import
without editing sys.path. With archc installed, `PYTHONPATH=$PWD python3 benchmarks/x.py` works too.
"""
