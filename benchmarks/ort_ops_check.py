"""archc.GatedMLP's CUDA kernel in onnxruntime: is it right, is it captured, is it faster?

    python3 -m benchmarks.ort_ops_check --out out/ort_ops_h200            # GPU: check + timing (~1 min on an H200)
    python3 -m benchmarks.ort_ops_check --device cpu --out out/ort_ops_cpu  # the CPU kernel, small sizes (a smoke run)

The library: --lib FILE, else ARCHC_ORT_OPS_LIB, else built here (exporters/ort_ops/build.py: nvcc and onnxruntime's
headers). The GPU machine has no network: build the library and copy the headers here into out/ (ignored by git, so it
travels as an ignored path: carry out/ort_ops, ~2.3 MB), and run there; should the library built here not load there
(another image's system libraries), that machine's own nvcc builds one from the carried headers:

    python3 -m exporters.ort_ops.build --cuda -o out/ort_ops/archc_ort_ops.so --headers-out out/ort_ops/include  # here
    export PYTHONPATH=/tmp/site:$PWD ARCHC_ORT_INCLUDE=$PWD/out/ort_ops/include ARCHC_CACHE_DIR=/tmp/archc-cache  # there
    LIB=out/ort_ops/archc_ort_ops.so
    python3 -c "import ctypes, sys; ctypes.CDLL(sys.argv[1])" $LIB || {
        python3 -m exporters.ort_ops.build --cuda -o /tmp/archc_ort_ops.so && LIB=/tmp/archc_ort_ops.so; }
    python3 -m benchmarks.ort_ops_check --lib $LIB --out $OUT/ort_ops

(a) check: the op alone (x [M, K] fed, W [2F, K] an initializer, as in a compiled model) against numpy in float64
    from the SwiGLU definition (Shazeer 2020: silu(x Wg^T) * (x Wu^T)), in a CUDA session that may not fall back
    to the CPU (session.disable_cpu_ep_fallback), at M = 1, 2, 4 (the warp-per-row kernel), 16, 512 (cuBLAS +
    silu*mul), plus K = 2052 (K % 8 != 0: cuBLAS at M = 1 too); with enable_cuda_graph at M = 1, 4 and 16, where
    the input buffer is rewritten after capture and the replayed graph must follow it. Negative control: the
    reference with gate and up swapped must miss.
(b) timing: a chain of --layers LLaMA MLP blocks x = x + down(gate_up(x)) with distinct weights (beyond the L2
    cache), TinyLlama-1.1B's shape, as two ONNX graphs: `onnx` (MatMul gate, MatMul up, Sigmoid, Mul, Mul, as
    archc's cuda lowering exports it today) and `archc_op` (one archc.GatedMLP), each with the same MatMul down
    and residual Add; CUDA graphs, IO binding, median of --runs runs (benchmarks/moe_mlp_probe.py's time_chain),
    per block; the difference is the gate/up part's saving per layer. Each timed output is checked too.
Writes DIR/ort_ops_check.json; exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import outputs

RESULT_FILE = "ort_ops_check.json"
SIZES = {"cuda": {"K": 2048, "F": 5632, "layers": 12, "rows": (1, 2, 4, 16, 512), "graph_rows": (1, 4, 16), "odd_K": 2052},
         "cpu": {"K": 64, "F": 96, "layers": 2, "rows": (1, 2, 4, 16, 40), "graph_rows": (), "odd_K": 68}}
# max|y - ref| / max|ref|. fp32 accumulation, one fp16 rounding of y: ~5e-4 (CPU kernel, tests/ort_ops); cuBLAS's
# tensor-core order and the warp-shuffle order differ from numpy's only in fp32 noise.
TOL = 2e-3
CONTROL_MIN = 0.1
CHAIN_TOL = 1e-2  # benchmarks/moe_mlp_probe.py's fp16 bound for the chain (fp16 activations between ops)
TIMED_ROWS = (1, 16)  # batch-1 decode, batch-16 decode


def op_model(K: int, F: int, w):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("GatedMLP", ["x", "w"], ["y"], domain="archc", name="gated_mlp")], "gated_mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["m", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["m", F])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 21), helper.make_operatorsetid("archc", 1)],
                             ir_version=10, producer_name="archc.ort_ops_check")


def session(model, lib: Path, device: str, graph: bool = False):
    """A session that registers the library; on cuda every node must run on the CUDA provider."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.register_custom_ops_library(str(lib))
    if device == "cuda":
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1" if graph else "0"})]
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ValueError(device)
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=providers)


def swiglu(x, w):
    import numpy as np

    F = w.shape[0] // 2
    x, w = x.astype(np.float64), w.astype(np.float64)
    g, u = x @ w[:F].T, x @ w[F:].T
    return g / (1 + np.exp(-g)) * u


def rel(y, ref) -> float:
    import numpy as np

    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


def weights(K: int, F: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2 * F, K), dtype=np.float32) * (2 / np.sqrt(K))).astype(np.float16)


def check_row(M: int, K: int, F: int, y, x, w, **extra) -> dict:
    ref = swiglu(x, w)
    err = rel(y, ref)
    swapped = rel(y, swiglu(x, w[list(range(F, 2 * F)) + list(range(F))]))
    ok = err <= TOL and swapped >= CONTROL_MIN
    return {"M": M, "K": K, "F": F, **extra, "rel_error": err, "tol": TOL, "control_gate_up_swapped": swapped,
            "status": "pass" if ok else "FAIL"}


def check_plain(lib: Path, device: str, sz: dict, seed: int) -> list[dict]:
    import numpy as np

    rows = []
    for K, Ms in ((sz["K"], sz["rows"]), (sz["odd_K"], (1, 3))):
        F = sz["F"]
        w = weights(K, F, seed)
        try:
            sess = session(op_model(K, F, w), lib, device)
        except Exception as e:  # noqa: BLE001 - recorded; the other checks still run
            rows.append({"K": K, "F": F, "status": "error", "error": " ".join(str(e).split())[:500]})
            continue
        for M in Ms:
            x = np.random.default_rng(seed + M).standard_normal((M, K)).astype(np.float16)
            y = sess.run(None, {"x": x})[0]
            path = ("warp-per-row" if M <= 4 and K % 8 == 0 else "cuBLAS + silu*mul") if device == "cuda" else "cpu"
            rows.append(check_row(M, K, F, y, x, w, cuda_graph=False, path=path))
    return rows


def check_graph(lib: Path, sz: dict, seed: int) -> list[dict]:
    """Under enable_cuda_graph: fixed device buffers; after the capture the input is rewritten in place and the
    replayed graph must compute from the new values (a graph that captured a copy, or scratch that moved,
    would not)."""
    K, F = sz["K"], sz["F"]
    w = weights(K, F, seed)
    return graph_rows(lib, sz, seed, lambda: op_model(K, F, w), lambda M, y, x: check_row(M, K, F, y, x, w))


def graph_rows(lib: Path, sz: dict, seed: int, make_model, check) -> list[dict]:
    """check_graph's method, shared with benchmarks/ort_ops_nbits_check.py: a row per M in sz["graph_rows"]; the
    session of make_model() under a CUDA graph, checked by check(M, y, x) -> row before and after x is rewritten."""
    import numpy as np
    import onnxruntime as ort

    K, F = sz["K"], sz["F"]
    rows = []
    for M in sz["graph_rows"]:
        row = {"M": M, "K": K, "F": F, "cuda_graph": True}
        try:
            sess = session(make_model(), lib, "cuda", graph=True)
            rng = np.random.default_rng(seed + 100 + M)
            x1, x2 = (rng.standard_normal((M, K)).astype(np.float16) for _ in range(2))
            y_host = np.zeros((M, F), np.float16)
            x_dev = ort.OrtValue.ortvalue_from_numpy(x1, "cuda", 0)
            y_dev = ort.OrtValue.ortvalue_from_numpy(y_host, "cuda", 0)
            io = sess.io_binding()
            io.bind_ortvalue_input("x", x_dev)
            io.bind_ortvalue_output("y", y_dev)
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", "1")
            for _ in range(4):  # onnxruntime's plain runs, then the capture, then replays
                sess.run_with_iobinding(io, ro)
            first = check(M, y_dev.numpy(), x1)
            x_dev.update_inplace(x2)
            sess.run_with_iobinding(io, ro)
            row.update(check(M, y_dev.numpy(), x2), rel_error_before_rewrite=first["rel_error"])
            if first["status"] != "pass":
                row["status"] = "FAIL"
        except Exception as e:  # noqa: BLE001
            row.update(status="error", error=" ".join(str(e).split())[:500])
        rows.append(row)
    return rows


# (b) timing


def chain_model(variant: str, blocks):
    """x [1, tokens, K] through len(blocks) MLP blocks; `onnx` is archc's current cuda lowering of the gate/up part,
    `archc_op` the custom op."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    K, F = blocks[0].gate.shape[1], blocks[0].gate.shape[0]
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.astype(np.float16)), name))
        return name

    def node(op, ins, name, domain=""):
        nodes.append(helper.make_node(op, ins, [name], name=name, domain=domain))
        return name

    x = "x"
    for i, b in enumerate(blocks):
        p = f"b{i}"
        if variant == "onnx":
            gate = node("MatMul", [x, init(f"{p}.gate.T", b.gate.T)], f"{p}.gate")
            up = node("MatMul", [x, init(f"{p}.up.T", b.up.T)], f"{p}.up")
            h = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"{p}.sigmoid")], f"{p}.silu"), up], f"{p}.h")
        elif variant == "archc_op":
            h = node("GatedMLP", [x, init(f"{p}.gate_up", np.concatenate([b.gate, b.up]))], f"{p}.h", domain="archc")
        else:
            raise ValueError(variant)
        x = node("Add", [x, node("MatMul", [h, init(f"{p}.down.T", b.down.T)], f"{p}.down")], f"{p}.residual")
    nodes.append(helper.make_node("Identity", [x], ["y"], name="y"))
    g = helper.make_graph(nodes, variant, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, "tokens", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, "tokens", K])], inits)
    return helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 21), helper.make_operatorsetid("archc", 1)],
                             ir_version=10, producer_name="archc.ort_ops_check")


def chain_references(xs: dict, blocks) -> dict:
    """The chain in float64 on the fp16-rounded weights, for every input at once (each weight converted once: the
    conversions, not the products, are what this costs at 12 x 35M weights)."""
    import numpy as np

    hs = {k: x.astype(np.float64) for k, x in xs.items()}
    for b in blocks:
        gate, up, down = (w.astype(np.float16).astype(np.float64) for w in (b.gate, b.up, b.down))
        for k, h in hs.items():
            g, u = h @ gate.T, h @ up.T
            hs[k] = h + (g / (1 + np.exp(-g)) * u) @ down.T
    return hs


def run_timing(lib: Path, device: str, sz: dict, seed: int, work: Path, warmup: int, runs: int) -> list[dict]:
    import numpy as np

    from benchmarks import moe_mlp_probe as probe

    blocks = probe.make_blocks(sz["layers"], sz["K"], sz["F"], seed)
    xs = {t: (np.random.default_rng(seed + t).standard_normal((1, t, sz["K"])) * 0.5).astype(np.float16) for t in TIMED_ROWS}
    refs = chain_references(xs, blocks)
    return time_variants(("onnx", "archc_op"), lambda v: chain_model(v, blocks), lib, device, sz, xs, refs, work, warmup, runs)


def time_variants(variants, make_model, lib: Path, device: str, sz: dict, xs: dict, refs: dict, work: Path, warmup: int,
                  runs: int) -> list[dict]:
    """A row per variant and M (xs and refs keyed by M): make_model(variant) saved once, timed by time_one per M.
    Shared with benchmarks/ort_ops_nbits_check.py."""
    from benchmarks import moe_mlp_probe as probe

    rows = []
    for variant in variants:
        path = probe.save(make_model(variant), work / f"{variant}.onnx")  # one file, a session per M
        for tokens, x in xs.items():
            row = {"variant": variant, "M": tokens, "layers": sz["layers"]}
            try:
                row.update(time_one(path, lib, device, x, refs[tokens], warmup, runs, sz["layers"]))
            except Exception as e:  # noqa: BLE001 - recorded; the other variant still runs
                row.update(status="error", error=" ".join(str(e).split())[:500])
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        for f in work.glob(f"{variant}.onnx*"):
            f.unlink()
    return rows


def time_one(path: str, lib: Path, device: str, x, ref, warmup: int, runs: int, layers: int) -> dict:
    """benchmarks/moe_mlp_probe.py's time_chain with the library registered: fixed device buffers bound once; on
    cuda the first runs capture a CUDA graph that each later run replays (moe_mlp_probe.time_session)."""
    from benchmarks import moe_mlp_probe as probe

    graph = device == "cuda"
    med, y = probe.time_session(session(path, lib, device, graph=graph), x, warmup, runs, device, graph)
    err = probe.rel_error(y, ref, x)
    return {"cuda_graph": graph, "us_per_chain": med * 1e6, "us_per_block": med * 1e6 / layers, "rel_error": err,
            "tol": CHAIN_TOL, "status": "pass" if err <= CHAIN_TOL else "FAIL"}


def saving(rows: list[dict], baseline: str = "onnx") -> dict:
    """Per timed M: the `baseline` variant's time per block against archc_op's."""
    out = {}
    for M in TIMED_ROWS:
        t = {r["variant"]: r.get("us_per_block") for r in rows if r["M"] == M}
        if t.get(baseline) and t.get("archc_op"):
            out[f"M{M}"] = {f"{baseline}_us_per_block": t[baseline], "archc_op_us_per_block": t["archc_op"],
                            "saved_us_per_layer": t[baseline] - t["archc_op"], "speedup": t[baseline] / t["archc_op"]}
    return out


def gpu_name() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def find_library(given: str | None, device: str) -> Path:
    from archc.errors import UserError
    from exporters.ort_ops.build import Kind, info, library

    if given:
        lib = Path(given)
        if not lib.is_file():
            raise UserError(f"--lib {given}: no such file; build one with `python3 -m exporters.ort_ops.build --cuda -o FILE`")
        if device == "cuda" and "cuda" not in info(lib).get("kernels", "").split(","):
            raise UserError(f"--lib {given}: has no CUDA kernel; build it with `python3 -m exporters.ort_ops.build --cuda -o FILE`")
        return lib
    return library(Kind.cuda if device == "cuda" else Kind.cpu)  # ARCHC_ORT_OPS_LIB, else built here


def main(argv: list[str] | None = None) -> int:
    ap = parser("ort_ops_check", __doc__)
    ap.add_argument("--out", required=True, type=Path, help=f"folder for {RESULT_FILE} (an existing file there: --force)")
    add_run_args(ap, "MLP blocks in the timed chain (cuda 12: 830 MB of weights, far beyond L2)")
    return run_main(ap, argv, "ort_ops_check", RESULT_FILE, "archc-ort-ops-check", SIZES, check_plain, check_graph, run_timing,
                    baseline="onnx")


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_args(ap: argparse.ArgumentParser, layers_help: str) -> None:
    """The options after --out, shared with benchmarks/ort_ops_nbits_check.py."""
    outputs.add_force(ap)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda: the check above; cpu: a smoke run of the same code")
    ap.add_argument("--lib", help="the op library (default: ARCHC_ORT_OPS_LIB, else built here)")
    ap.add_argument("--layers", type=int, help=layers_help)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)


def run_main(ap: argparse.ArgumentParser, argv, prog: str, result_file: str, kind: str, sizes: dict, check_plain, check_graph,
             run_timing, baseline: str, need_op: str | None = None) -> int:
    """The check scripts' main after their parser: refuse bad input (exit 2, one line), run (a) and (b), write
    DIR/result_file; exit 1 if a check fails. need_op: an op the library must list (an older build lacks it)."""
    a = ap.parse_args(argv)
    result_path = a.out / result_file
    outputs.check_outputs(ap, a.force, ("--out", result_path))
    if a.layers is not None and a.layers < 1:
        print(f"{prog}: --layers {a.layers}: must be at least 1", file=sys.stderr)
        return 2
    from archc.errors import UserError
    from exporters.ort_ops.build import info

    try:
        lib = find_library(a.lib, a.device)
        if need_op is not None and need_op not in info(lib).get("ops", "").split(","):
            raise UserError(f"{lib}: an older archc op library without {need_op}; rebuild it with "
                            f"`python3 -m exporters.ort_ops.build --{a.device} -o FILE`")
    except UserError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    import onnxruntime as ort

    sz = dict(sizes[a.device], **({"layers": a.layers} if a.layers else {}))
    t0 = time.perf_counter()
    result = {"kind": kind, "device": a.device, "gpu": gpu_name() if a.device == "cuda" else None,
              "onnxruntime": ort.__version__, "library": str(lib), "sizes": dict(sz), "tol": TOL, "control_min": CONTROL_MIN}
    check = check_plain(lib, a.device, sz, a.seed) + (check_graph(lib, sz, a.seed) if a.device == "cuda" else [])
    for r in check:
        print(json.dumps(r), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=f"{prog}-") as tmp:
        timing = run_timing(lib, a.device, sz, a.seed, Path(tmp), a.warmup, a.runs)
    ok = all(r["status"] == "pass" for r in check + timing)
    result.update(check=check, timing=timing, saving=saving(timing, baseline), warmup=a.warmup, runs=a.runs, ok=ok,
                  seconds=time.perf_counter() - t0)
    a.out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"ok": ok, "saving": result["saving"], "seconds": round(result["seconds"], 1)}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
