"""A/B of the ORT decode path in one run on one card: several variants of archc (this tree, an older
tree, export or provider options) measured in alternation, each in its own process.

    python3 -m benchmarks.ab_decode --family llama --variants "new;old;new:next_token=none" \
        --old-root .baseline --rounds 2 --out out/ab.json

Variants are separated by ';'. A variant is `ROOT[:key=value,...]`: ROOT `new` (this tree), `old` (--old-root), or a
folder relative to the repository (e.g. a `git archive` of another commit's archc/ and exporters/); keys: next_token=argmax|none,
logits=all|last (export options), quant=int4|int8 (compile --quant, its defaults; quant_head=1 adds --quant-head), gate_up=one_gemm|two_gemms (the cuda
lowering's GATE_UP; gate_up_quant=qmoe|one_gemm|two_gemms its GATE_UP_QUANT for --quant exports), kernels=onnxruntime|archc (compile
--kernels; archc takes its op library from ARCHC_ORT_OPS_LIB, else builds it with nvcc), sdpa_kernel=N (CUDA provider option), cuda_graph=0|1,
decode_window=N (the runner's greedy steps per host round trip, Session(decode_window); 1 = the one-step loop), env.NAME=VALUE (an environment variable of the
variant's process, e.g. env.ORT_ENABLE_XQA=0: onnxruntime reads some kernel choices only from the environment). Every variant exports the same family of
benchmarks/standard.py with seeded weights, then measures, exactly as `archc bench`'s ort backend:
prefill = median T(1) of 5, time per output token = (median T(N) of 3 - T(1)) / (N - 1), after
warm-up. The first generate call of a fresh session is also timed (`cold_ms`): a model whose
attention plans kernels per sequence length shows it there. Rounds alternate the variants, so drift
of the card shows up as a difference between rounds rather than between variants.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import kernels_arg, outputs, standard

ROOT = Path(__file__).resolve().parent.parent


# A variant's keys and their values (None: a non-negative integer; env.NAME takes any value). Spelled out here
# rather than read from exporters' enums, which import onnx into a parent that only orchestrates;
# tests/bench/test_ab_decode_errors.py holds them equal to Logits, NextToken, QuantKind, Kernels and GateUp (less
# GateUp.archc_op, which kernels=archc selects: it needs the op library, not a lowering constant).
VARIANT_KEYS: dict[str, tuple[str, ...] | None] = {
    "next_token": ("argmax", "none"), "logits": ("all", "last"), "quant": ("int4", "int8"), "quant_head": ("0", "1"),
    "gate_up": ("one_gemm", "two_gemms", "qmoe"), "gate_up_quant": ("one_gemm", "two_gemms", "qmoe"),
    "kernels": kernels_arg.KERNELS,
    "sdpa_kernel": None, "cuda_graph": ("0", "1"), "decode_window": None,
}
AT_LEAST_ONE = {"decode_window"}  # integer keys where 0 means nothing (Session(decode_window) takes 1 and more)


class VariantError(ValueError):
    """A --variants item this script cannot run: the message is the whole line."""


def parse_variant(text: str) -> dict:
    """ROOT[:key=value,...] -> {name, root, opts}. An unknown key or value is refused (a misspelt key was
    ignored, so the run measured the default under the variant's name)."""
    root, _, opts = text.partition(":")
    out = {"name": text, "root": root, "opts": {}}
    for kv in filter(None, opts.split(",")):
        k, eq, v = kv.partition("=")
        if not eq:
            raise VariantError(f"--variants {text!r}: {kv!r} is not key=value")
        if k.startswith("env.") and len(k) > 4:
            pass
        elif k not in VARIANT_KEYS:
            raise VariantError(f"--variants {text!r}: unknown key {k!r}; keys: {', '.join(VARIANT_KEYS)}, env.NAME")
        elif VARIANT_KEYS[k] is None and not (v.isascii() and v.isdigit() and len(v) <= 9 and (int(v) >= 1 or k not in AT_LEAST_ONE)):
            raise VariantError(f"--variants {text!r}: {k} takes {'a positive' if k in AT_LEAST_ONE else 'a non-negative'} "
                               f"integer, got {v!r}")
        elif VARIANT_KEYS[k] is not None and v not in VARIANT_KEYS[k]:
            raise VariantError(f"--variants {text!r}: {k}={v!r}; choose one of {'|'.join(VARIANT_KEYS[k])}")
        if k in out["opts"]:
            raise VariantError(f"--variants {text!r}: {k} is given twice; keep one")
        out["opts"][k] = v
    return out


KEYED_SOURCES = (".py", ".cc", ".cu", ".h")  # the files of archc/ and exporters/ an export's key reads (_export_key)


def _export_key(sets: list[str], spec) -> str:
    """First digits of a sha256 of what the folder name above leaves out but the export depends on: the --set list
    (in order: a later --set overrides an earlier one), the resolved spec (an edited spec file; an older tree
    without Spec.to_yaml_dict: its name), and the .py files of the archc and exporters this process imported
    (the variant's tree: a changed tree is another export) with the op library's C++/CUDA sources (KEYED_SOURCES) or
    the ARCHC_ORT_OPS_LIB file that replaces their build. An export is reused when its folder has a
    model.onnx, so without these a run with another --set, or after an edit of the code, measured the export
    an earlier run made."""
    import hashlib

    import archc
    import exporters

    resolved = spec.to_yaml_dict() if hasattr(spec, "to_yaml_dict") else spec.name
    h = hashlib.sha256(json.dumps({"sets": list(sets), "spec": resolved}, sort_keys=True, default=str).encode())
    for pkg in (archc, exporters):
        root = Path(pkg.__file__).resolve().parent
        # the op library's sources too: a kernels=archc export copies the library built from them into its folder
        for p in sorted(q for q in root.rglob("*") if q.suffix in KEYED_SOURCES and q.is_file()):
            data = p.read_bytes()
            h.update(f"{p.relative_to(root.parent).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    lib = os.environ.get("ARCHC_ORT_OPS_LIB")  # a library built elsewhere replaces the build (exporters.ort_ops.build)
    if lib and Path(lib).is_file():
        h.update(b"ARCHC_ORT_OPS_LIB\0" + Path(lib).read_bytes())
    return h.hexdigest()[:12]


def child(args) -> dict:
    """Runs inside the variant's process: export, open, measure."""
    import numpy as np

    from benchmarks import standard

    import archc
    from archc.model_dir import MODEL_FILE
    from archc.runner import Session
    from exporters.onnx_export import export

    v = json.loads(args.child)
    graph = archc.compile(standard.load_family(args.family, ROOT, extra=[x for x in args.set if x]))
    # env and the runner's window do not change the export
    export_opts = {k: x for k, x in v["opts"].items() if not k.startswith("env.") and k != "decode_window"}
    d = Path(args.work) / (f"{args.family}-{args.dtype}-{v['root']}-" + "".join(c if c.isalnum() else "_" for c in json.dumps(export_opts, sort_keys=True))
                           + "-" + _export_key(args.set, graph.spec))
    kw = {k: v["opts"][k] for k in ("next_token", "logits", "kernels") if k in v["opts"]}
    if "quant" in v["opts"]:
        from archc.quant import QuantKind, QuantSettings

        kw["quant"] = QuantSettings(QuantKind(v["opts"]["quant"]), head=v["opts"].get("quant_head", "0") == "1")
    for key, const in (("gate_up", "GATE_UP"), ("gate_up_quant", "GATE_UP_QUANT")):  # lowering constants, this process only
        if key in v["opts"]:
            from exporters import onnx_lowering_cuda

            setattr(onnx_lowering_cuda, const, onnx_lowering_cuda.GateUp(v["opts"][key]))
    t0 = time.perf_counter()
    if not (d / MODEL_FILE).exists():
        export(graph, d, target="cuda", dtype=args.dtype, fused_fp32=args.dtype == "fp32", **kw)
    export_s = time.perf_counter() - t0
    cuda_options = {k: v["opts"][k] for k in ("sdpa_kernel",) if k in v["opts"]}
    skw = {"cuda_options": cuda_options} if cuda_options else {}
    if "decode_window" in v["opts"]:
        skw["decode_window"] = int(v["opts"]["decode_window"])
    s = Session(d, device=args.device, cuda_graph=v["opts"].get("cuda_graph", "1") == "1", **skw)
    rng = np.random.default_rng(args.prompt)
    prompts = rng.integers(1, graph.spec.vocab_size, (args.batch, args.prompt)).tolist()
    N = args.new_tokens

    def t(n):
        t0 = time.perf_counter()
        r = s.generate(prompts, n)
        return time.perf_counter() - t0, r

    cold, _ = t(N)
    for _ in range(2):
        t(1), t(N)
    t1 = statistics.median(t(1)[0] for _ in range(5))
    runs = [t(N) for _ in range(3)]
    tn = statistics.median(x for x, _ in runs)
    tpot = (tn - t1) / (N - 1)
    return {"variant": v["name"], "export_s": export_s, "cold_ms": cold * 1e3, "prefill_ms": t1 * 1e3,
            "tpot_ms": tpot * 1e3, "tok_s": args.batch / tpot, "cuda_graph": s.cuda_graph,
            "next_token": getattr(s, "has_next_token", False), "ids_head": runs[-1][1].ids[0][:16], "model_dir": str(d)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="llama", choices=sorted(standard.FAMILIES))
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--variants", default="new;old")
    ap.add_argument("--old-root", default=".baseline")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp/archc-ab")
    ap.add_argument("--out", type=Path, help="JSON file, rewritten after each result (an existing one: --force)")
    outputs.add_force(ap)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (fp32, with --set to shrink)")
    ap.add_argument("--set", action="append", default=[], help="extra --set on the family's spec (smoke tests)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    outputs.check_outputs(ap, args.force, ("--out", args.out))  # once, before any variant runs; the rewrites after each result are ours
    # Bad input is one line and exit 2 before any variant runs, not an error row among the results and exit 0:
    # the variants' syntax, their trees, and the spec with --set (load_family prints archc's line and exits 2)
    try:
        variants = [parse_variant(x) for x in args.variants.split(";") if x]
    except VariantError as e:
        return _refuse(ap, str(e))
    if not variants:
        return _refuse(ap, f"--variants {args.variants!r}: no variant; give e.g. \"new;old\"")
    for v in variants:  # archc's ops need the cuda target, which only --device cuda exports (the child's export refused
        # it with a traceback, recorded as an error row of an exit-0 run)
        if v["opts"].get("kernels") == "archc" and args.device != "cuda":
            return _refuse(ap, f"--variants {v['name']!r}: kernels=archc needs --device cuda, not --device {args.device}")
    roots = {v["name"]: _root(v, args) for v in variants}
    for name, root in roots.items():
        if not (root / "archc").is_dir():
            return _refuse(ap, f"--variants {name!r}: {root} holds no archc/ tree; give new, old (--old-root) or such a folder")
    standard.load_family(args.family, ROOT, extra=[x for x in args.set if x])
    results = []
    for rnd in range(args.rounds):
        for v in variants:
            root = roots[v["name"]]
            extra_env = {k[len("env."):]: x for k, x in v["opts"].items() if k.startswith("env.")}
            env = dict(os.environ, **extra_env, PYTHONPATH=os.pathsep.join([str(root), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
            cmd = [sys.executable, __file__, "--child", json.dumps(v), "--family", args.family, "--dtype", args.dtype,
                   "--batch", str(args.batch), "--prompt", str(args.prompt), "--new-tokens", str(args.new_tokens), "--work", args.work,
                   "--device", args.device] + [a for x in args.set for a in ("--set", x)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None and p.returncode == 2:  # the child's one-line refusal (e.g. a spec an older tree rejects)
                said = [x for x in p.stderr.splitlines() if x.strip()]
                return _refuse(ap, f"variant {v['name']!r}: " + (said[-1] if said else "refused its input (exit 2)"))
            if line is None:
                r = {"variant": v["name"], "error": (p.stderr or p.stdout).strip().splitlines()[-3:]}
            else:
                r = json.loads(line[7:])
            r["round"] = rnd
            results.append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"family": args.family, "dtype": args.dtype, "batch": args.batch,
                                                "prompt": args.prompt, "results": results}, indent=1))
    return 0


def _root(v: dict, args) -> Path:
    return {"new": ROOT, "old": (ROOT / args.old_root).resolve()}.get(v["root"]) or (ROOT / v["root"]).resolve()


def _refuse(ap: argparse.ArgumentParser, message: str) -> int:
    from archc.errors import one_line

    print(f"{ap.prog}: " + one_line(message), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
