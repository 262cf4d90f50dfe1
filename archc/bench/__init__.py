"""Benchmark code for `archc bench` and the scripts in benchmarks/: the timing harness
(archc.bench.harness) and the transformers bridge of the `hf` backends (archc.bench.hf).

This subpackage sits above the core, beside archc/commands/: it builds the emitters' outputs
(exporters/) and runs them. Only the `bench` command (lazily), benchmarks/ and the tests import it;
nothing in the core (spec, loader, graph, cost, diff, compare, draw, render) does, and importing
this package alone pulls in neither torch nor onnxruntime. It ships in the wheel so that an
installed `archc bench` works.
"""
