"""Run the whole standard set of issue 6 in one invocation: 40 shapes, fault-isolated, one set of limits.

    python3 -m benchmarks.run_standard --out OUT/results.json            # foreground
    python3 -m benchmarks.run_standard --out OUT/results.json --detach   # detached (below)
    python3 -m benchmarks.run_standard --plan                            # cases, backends, time estimate

The standard set (benchmarks/standard.py): LLaMA, PaLM, BLOOM, GPT-2, GLM at about 1.1 B parameters;
batch 1 and 16; prompt 512 and 2048; 128 new tokens; fp16 and bf16. Ten groups, one per (family,
dtype), in this order: LLaMA fp16 first (the issue's targets), then the other families in fp16, then
every family in bf16. Each group measures its four (batch, prompt) shapes with one model build, one
ONNX export per logits mode, one onnxruntime session (the runner keeps its fixed buffers per (batch,
max_len)) and one HF model. Backends per case:
  LLaMA, batch 1, fp16 (both prompts): ort, ort-nograph, torch, hf-eager, hf-sdpa, hf-compile: the
    targets compare ORT with HF eager and with HF's torch.compile (torch-compile, archc's own module
    under torch.compile, compiles for about 3 minutes and no target needs it: `archc bench` has it).
  every other case: ort + the one alternative a user would run instead: hf-sdpa for LLaMA and GPT-2,
    hf-eager for BLOOM (transformers' Bloom has no sdpa), archc's torch module for PaLM and GLM (no
    transformers class computes them); in bf16 the alternative runs at batch 1 only (a spot check).
  Timed generate runs: 3 for ort and for the LLaMA batch-1 fp16 baselines (the target figures),
  --baseline-repeats (default 2) for the other baselines; prefill: 5 everywhere.

Fault isolation: each group runs in its own child process (this script with --_group; subprocess,
so no CUDA context is inherited: the parent never imports torch). A child that dies (CUDA fault,
segfault, OOM kill, abort) or runs past --group-timeout-s (its whole process group is killed) loses
only the case it was on: that case goes under "failed" with the reason (exit status and the last
lines of its output, with the Python stack: PYTHONFAULTHANDLER), and the group's remaining cases go on
in a fresh child. A backend error that names a CUDA fault (the context is poisoned from then on) ends
the child after that case is recorded, and the rest of the group goes on in a fresh child too. The
first child measures the card's limits (copy bandwidth, fp16/bf16 GEMM rate:
archc.bench.harness.measure_limits) and the environment (card, versions) before its cases; every later child
gets them, so every figure of the JSON relates to one set of limits from one run. The JSON (--out) is
rewritten atomically while a group runs (every few seconds, when its child has finished a case) and
after it, so a run stopped at any point keeps what it measured.
Exports ahead: while group i measures on the GPU, a CPU-only process (CUDA_VISIBLE_DEVICES empty,
4 threads) exports group i+1's ONNX models into the work folder (default: a fresh `.OUT.exports`
beside --out; --work-dir DIR reuses the exports already in DIR); each group's exports are deleted once
it is done (--keep-exports keeps them), so at most two groups' models (about 10 GB) are on disk.
--no-pre-export exports inside each group's child instead (about 12 s more per group, nothing else
on the CPU while measuring).

Time (--plan prints the estimate per group, from the per-backend times of the 07:13 UTC H200 run in
benchmarks/results/tier*.json): about 20 minutes on an H200, of which LLaMA fp16 is about 7 (archc's
module under torch.compile alone compiles for about 3) and each other group 1-2. That is past the
device's 10 minutes per command, so on the GPU machine run it detached (its own session: it survives
the command that started it) and wait for it in the next commands, each issued right after the
previous one returns (the machine stays warm for only about 30 s after a call):

    export PYTHONPATH=/tmp/site:$PWD
    python3 -m benchmarks.run_standard --out /tmp/std/results.json --detach --wait-s 540; cp /tmp/std/results.json* $OUT/
    python3 -m benchmarks.run_standard --out /tmp/std/results.json --status --wait-s 570; cp /tmp/std/results.json* $OUT/
    ... repeat the second line until it prints "finished" (its exit status: 0 finished, 3 still running,
    2 the run's process is gone); every copy to $OUT holds what was measured so far.

--detach writes the run's output to OUT.log beside the JSON (OUT.log is results.json.log above).
--out, OUT.log (with --detach) and the hidden folders .OUT.parts and .OUT.exports (without --work-dir) beside
it, which a run killed before its end leaves behind, are replaced only with --force.
--status prints groups done, the one running, cases measured and failed, and an estimate of the time
left. Run in the foreground (no --detach) where a command may take the whole run.

Other options: --families, --dtypes, --batches, --prompts restrict the set; --backends restricts every
case to those backends; --skip family:dtype:batch:prompt,... leaves cases out (recorded as skipped);
--budget-s starts no group and no case after that many seconds (recorded as skipped); --tier is gone
(the groups replace it: use --families/--dtypes/--batches).

CPU check of the orchestration (seconds; tests/bench/test_run_standard.py): --tiny --device cpu shrinks every
family (standard.TINY), prompts 8 and 12, batches 1 and 2, 4 new tokens, leaves out the two
torch.compile backends unless --backends names them. On the CPU, fp16 cases run in fp32 (the run's
dtype is in the JSON, the asked one in `case`) and bf16 cases are skipped with the reason
(onnxruntime's CPU provider has no bf16 kernels for these models). About 20-40 s on a 2-core machine.
Test hooks: ARCHC_BENCH_CRASH=family or family:dtype:batch:prompt (comma-separated) makes the child
os.abort() at its start or before that case; ARCHC_BENCH_FAULT=family:dtype:batch:prompt records a
CUDA fault in that case's first backend (the child then ends as after a real one).
The figures go into RESULTS.md through benchmarks/render_results.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from benchmarks import outputs, standard  # noqa: E402  (light: no torch)

ALL_BACKENDS = ["ort", "ort-nograph", "torch", "torch-compile", "hf-eager", "hf-sdpa", "hf-compile"]
# The targets' backends: every backend but torch-compile (archc's own module under torch.compile, about 3 min
# of compiling and no target compares with it; `archc bench --backends torch-compile` measures it alone).
TARGET_BACKENDS = [n for n in ALL_BACKENDS if n != "torch-compile"]
ALTERNATIVE = {"llama": "hf-sdpa", "gpt2": "hf-sdpa", "bloom": "hf-eager", "palm": "torch", "glm": "torch"}
COMPILED = ("torch-compile", "hf-compile")
CPU_BF16 = "bf16 on the CPU: onnxruntime's CPU provider has no bf16 kernels for these models (run on CUDA)"

# Rough seconds per backend per case on an H200 (warm-up + timed runs), and first-use set-up, from the
# 07:13 UTC run (benchmarks/results/tier*.json); batch 16 baselines take about 1.5x.
EST_CASE = {"ort": 2, "ort-nograph": 2, "torch": 11, "torch-compile": 5, "hf-eager": 7, "hf-sdpa": 12, "hf-compile": 27}
EST_SETUP = {"ort": 5, "ort-nograph": 1, "torch": 12, "torch-compile": 180, "hf-eager": 12, "hf-sdpa": 12, "hf-compile": 2}
EST_CHILD = 10  # start, imports, CUDA context
EST_EXPORT = 12  # one 1.1 B export on the CPU (overlapped with the previous group except the first)
EST_LIMITS = 8


# ------------------------------------------------------------------------------------------------
# The plan


def plan(args) -> list[dict]:
    """Groups in run order: [{family, dtype, cases: [{family, dtype, batch, prompt, backends, key}], skipped: [...]}]."""
    fams = [f for f in standard.FAMILIES if f in args.families.split(",")]
    dtypes = [d for d in ("fp16", "bf16") if d in args.dtypes.split(",")]
    if args.tiny:
        batches, prompts = [1, 2], [8, 12]
    else:
        batches, prompts = [1, 16], [512, 2048]
    batches = [b for b in batches if not args.batches or str(b) in args.batches.split(",")]
    prompts = [p for p in prompts if not args.prompts or str(p) in args.prompts.split(",")]
    only = args.backends.split(",") if args.backends else None
    skip = set(filter(None, args.skip.split(",")))
    groups = []
    for dtype in dtypes:
        for fam in fams:
            g = {"family": fam, "dtype": dtype, "cases": [], "skipped": []}
            for b in batches:
                for p in prompts:
                    target = fam == "llama" and b == 1 and dtype == "fp16"
                    if target:
                        be = list(TARGET_BACKENDS)
                    elif dtype == "bf16" and b > 1:  # bf16 baselines at batch 1 only: a spot check of the dtype
                        be = ["ort"]
                    else:
                        be = ["ort", ALTERNATIVE[fam]]
                    if args.tiny and not only:
                        be = [n for n in be if n not in COMPILED]
                    if only:
                        be = [n for n in be if n in only]
                    c = {"family": fam, "dtype": dtype, "batch": b, "prompt": p, "backends": be, "key": f"{fam}:{dtype}:{b}:{p}",
                         "target": target}
                    if c["key"] in skip:
                        g["skipped"].append(dict(c, reason="--skip"))
                    elif args.device == "cpu" and dtype == "bf16":
                        g["skipped"].append(dict(c, reason=CPU_BF16))
                    elif not be:
                        g["skipped"].append(dict(c, reason="--backends leaves no backend for this case"))
                    else:
                        g["cases"].append(c)
            groups.append(g)
    return groups


def estimate(group: dict, first: bool) -> float:
    t = EST_CHILD + (EST_LIMITS if first else 0) + (EST_EXPORT if first else 0)
    seen = set()
    for c in group["cases"]:
        for n in c["backends"]:
            if n not in seen:
                seen.add(n)
                t += EST_SETUP[n]
            baseline = not n.startswith("ort")
            t += EST_CASE[n] * (1.5 if c["batch"] > 1 and baseline else 1) * (0.75 if baseline and not c["target"] else 1)
        if group["family"] in ("bloom", "glm") and "ort" in c["backends"]:
            t += 8  # concatenated cache: every new length costs onnxruntime a cold step the first time
    return t


def print_plan(groups: list[dict], args) -> None:
    total = 0.0
    for i, g in enumerate(groups):
        est = estimate(g, i == 0) if g["cases"] else 0
        total += est
        print(f"group {i + 1}: {g['family']} {g['dtype']}  ~{est / 60:.1f} min" + ("  (the H200 estimate; the CPU is far quicker at --tiny)" if args.tiny and i == 0 else ""))
        for c in g["cases"]:
            print(f"  {c['key']:24s} {', '.join(c['backends'])}")
        for c in g["skipped"]:
            print(f"  {c['key']:24s} skipped: {c['reason']}")
    n = sum(len(g["cases"]) for g in groups)
    print(f"{n} cases in {sum(1 for g in groups if g['cases'])} groups, about {total / 60:.0f} min on an H200 "
          f"(rough: per-backend times of the 07:13 UTC run)")


# ------------------------------------------------------------------------------------------------
# The parent: one child per group


def _py_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONIOENCODING", "utf-8")  # the children's tables reach the parent through a pipe
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a child killed by a signal (CUDA fault, abort) leaves its Python stack
    env.update(extra or {})
    return env


def _write(path: Path, data: dict) -> None:
    from archc.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1), make_folder=True)


def _merge_partial(report: dict, result: Path, base: int, out: Path, seen: dict) -> None:
    """While a child runs: its cases measured so far into the run's JSON (a stopped parent keeps them)."""
    try:
        mtime = result.stat().st_mtime_ns
        if seen.get(result) == mtime:
            return
        runs = json.loads(result.read_text()).get("runs", [])
    except (OSError, ValueError):
        return
    seen[result] = mtime
    del report["runs"][base:]
    report["runs"] += runs
    _write(out, report)


class Child:
    """A subprocess in its own process group whose merged output is echoed and its last lines kept."""

    def __init__(self, argv: list[str], env: dict, log_prefix: str = "", echo: bool = True):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True, text=True, errors="replace")
        self.tail: collections.deque = collections.deque(maxlen=400)
        self.thread = threading.Thread(target=self._pump, args=(log_prefix, echo), daemon=True)
        self.thread.start()

    def _pump(self, prefix: str, echo: bool) -> None:
        for line in self.proc.stdout:  # read to the end whatever happens: a full pipe would block the child
            self.tail.append(line.rstrip("\n"))
            if echo:
                try:
                    print(prefix + line, end="", flush=True)
                except (OSError, ValueError):
                    pass

    def wait(self, timeout: float | None, on_tick=None) -> str | None:
        """None when it exited with status 0, else why not (killing its process group on time-out).
        on_tick() runs every few seconds while it waits."""
        t_end = None if timeout is None else time.time() + timeout
        why = None
        while True:
            step = 2.0 if t_end is None else max(0.0, min(2.0, t_end - time.time()))
            try:
                rc = self.proc.wait(timeout=step)
                break
            except subprocess.TimeoutExpired:
                if t_end is not None and time.time() >= t_end:
                    self.kill()
                    rc, why = self.proc.wait(), f"timed out after {timeout:.0f} s (--group-timeout-s); killed"
                    break
                if on_tick:
                    on_tick()
        self.thread.join(timeout=5)
        if rc == 0 and why is None:
            return None
        if why is None:
            why = f"exit status {rc}" + (f" ({signal.Signals(-rc).name})" if rc < 0 and -rc in signal.valid_signals() else "")
        lines = [ln for ln in self.tail if ln.strip() and set(ln.strip()) - set("^~ ")  # no caret lines, no module list
                 and not ln.startswith("Extension modules:")
                 and '"<frozen runpy>"' not in ln][-8:]  # `python -m`'s own frames in a faulthandler stack
        return why + (": " + " | ".join(ln.strip()[:200] for ln in lines) if lines else "")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the child's own group: its compile workers too
        except ProcessLookupError:
            pass


def run_dir_of(out: Path) -> Path:
    """The children's result files of a run writing `out` (removed at the end)."""
    return out.parent / f".{out.name}.parts"


def exports_of(out: Path) -> Path:
    """The default work folder of a run writing `out` (no --work-dir; removed at the end unless --keep-exports)."""
    return out.parent / f".{out.name}.exports"


def log_of(out: Path) -> Path:
    """--detach's output file: OUT.log beside the JSON."""
    return out.with_name(out.name + ".log")


def run_parent(args, groups: list[dict]) -> int:
    t0 = time.time()
    out: Path = args.out.resolve()
    run_dir = run_dir_of(out)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        from archc.errors import UserError

        raise UserError(f"--out {args.out}: cannot create {run_dir}: {e.strerror}") from None
    if args.work_dir:  # the user's folder: exports already there are reused
        work_dir = Path(args.work_dir).resolve()
    else:  # a fresh folder, so no export of an earlier exporter version is measured by mistake
        work_dir = exports_of(out)
        shutil.rmtree(work_dir, ignore_errors=True)
    report = {
        "kind": "archc-standard-run", "environment": None, "limits": None,
        "options": {"device": args.device, "tiny": args.tiny, "new_tokens": args.new_tokens, "repeats": args.repeats,
                    "baseline_repeats": args.baseline_repeats, "argv": sys.argv[1:]},
        "runs": [], "failed": [], "skipped": [c for g in groups for c in g["skipped"]], "groups": [],
        "state": {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)), "finished": False, "pid": os.getpid(),
                  "running": None, "groups_total": sum(1 for g in groups if g["cases"]), "groups_done": 0,
                  "estimate_left_s": sum(estimate(g, i == 0) for i, g in enumerate(groups) if g["cases"])},
    }
    _write(out, report)
    todo = [g for g in groups if g["cases"]]
    exporters: dict[int, Child] = {}

    def start_export(i: int) -> None:
        if args.pre_export and i < len(todo) and i not in exporters:
            job = run_dir / f"export-{i}.json"
            _write(job, {"group": todo[i], "device": args.device, "tiny": args.tiny, "work_dir": str(work_dir)})
            exporters[i] = Child([sys.executable, "-m", "benchmarks.run_standard", "--_export", str(job)],
                                 _py_env({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}), log_prefix="[export] ")

    limits, env = None, None
    for i, g in enumerate(todo):
        name = f"{g['family']} {g['dtype']}"
        if args.budget_s is not None and time.time() - t0 > args.budget_s:
            report["skipped"] += [dict(c, reason=f"--budget-s {args.budget_s:.0f} passed before the group started") for c in g["cases"]]
            continue
        start_export(i)
        if i in exporters:  # this group's models, exported while the previous group measured
            why = exporters[i].wait(args.group_timeout_s)
            if why:
                print(f"[export for {name} failed; the group exports itself] {why}", flush=True)
        start_export(i + 1)
        print(f"=== group {i + 1}/{len(todo)}: {name} ({time.time() - t0:.0f} s in)", flush=True)
        report["state"].update(running=name, running_since=time.time())
        _write(out, report)
        tg, remaining, reasons, attempt, exports = time.time(), list(g["cases"]), [], 0, set()
        while remaining:
            # One child per attempt: a child that dies loses only the case it was on; the cases after it
            # go to a fresh process (a CUDA fault poisons the context of the process it happens in).
            job = run_dir / f"group-{i}-{attempt}.json"
            result = run_dir / f"group-{i}-{attempt}.result.json"
            _write(job, {"group": dict(g, cases=remaining), "device": args.device, "tiny": args.tiny,
                         "new_tokens": args.new_tokens, "repeats": args.repeats, "baseline_repeats": args.baseline_repeats,
                         "work_dir": str(work_dir), "limits": limits, "need_env": env is None, "result": str(result),
                         "deadline": None if args.budget_s is None else t0 + args.budget_s})
            child = Child([sys.executable, "-m", "benchmarks.run_standard", "--_group", str(job)], _py_env())
            base = len(report["runs"])
            seen: dict = {}
            why = child.wait(args.group_timeout_s, on_tick=lambda: _merge_partial(report, result, base, out, seen))
            res = json.loads(result.read_text()) if result.exists() else {}
            del report["runs"][base:]
            limits = limits or res.get("limits")
            env = env or res.get("environment")
            report["limits"], report["environment"] = limits, env
            report["runs"] += res.get("runs", [])
            report["skipped"] += res.get("skipped", [])
            exports |= set(res.get("exports", []))
            done = {r["case"] for r in res.get("runs", [])} | {c["key"] for c in res.get("skipped", [])}
            left = [c for c in remaining if c["key"] not in done]
            if res.get("exit"):  # the child stopped itself (CUDA context poisoned): its last case is measured
                why = why or res["exit"]
                reasons.append(res["exit"])
                print(f"[{name}: {res['exit']}; the rest of the group goes on in a new process]", flush=True)
            elif (why or left) and not res.get("current"):  # died before its first case: set-up, not a case
                why = why or "the child ended before its first case"
                report["failed"] += [dict(c, reason=f"the group's process failed before its first case: {why}") for c in left]
                reasons.append(f"set-up: {why}")
                print(f"[{name}: the child failed before its first case; the group's {len(left)} cases are recorded as failed: {why}]", flush=True)
                left = []
            elif why or left:
                why = why or "the child ended without measuring this case"
                current = res.get("current")
                lost = next((c for c in left if c["key"] == current), left[0] if left else None)
                if lost is not None:
                    report["failed"].append(dict(lost, reason=why))
                    left = [c for c in left if c is not lost]
                reasons.append(f"{lost['key'] if lost else '?'}: {why}")
                print(f"[{name}: child failed on {lost['key'] if lost else '?'}: {why}]", flush=True)
            remaining, attempt = left, attempt + 1
            if res.get("skipped") and any("--budget-s" in c.get("reason", "") for c in res["skipped"]):
                break
        report["groups"].append({"family": g["family"], "dtype": g["dtype"], "wall_s": round(time.time() - tg, 1),
                                 "status": "failed" if reasons else "ok", "reason": "; ".join(reasons) or None,
                                 "processes": attempt})
        if not args.keep_exports:
            for d in exports:
                shutil.rmtree(d, ignore_errors=True)
        st = report["state"]
        st.update(groups_done=st["groups_done"] + 1, running=None,
                  estimate_left_s=sum(estimate(h, False) for h in todo[i + 1:]))
        _write(out, report)
    for c in exporters.values():
        c.kill()
        c.proc.wait()
    report["state"].update(finished=True, wall_s=round(time.time() - t0, 1), running=None, estimate_left_s=0)
    _write(out, report)
    shutil.rmtree(run_dir, ignore_errors=True)
    if not args.work_dir and not args.keep_exports:
        shutil.rmtree(work_dir, ignore_errors=True)
    nf = len(report["failed"])
    print(f"done in {time.time() - t0:.0f} s: {len(report['runs'])} cases measured, {nf} failed, "
          f"{len(report['skipped'])} skipped -> {out}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# Children


def _graph(family: str, tiny: bool):
    import archc

    return archc.compile(standard.load_family(family, ROOT, tiny=tiny))


def _run_dtype(dtype: str, device: str) -> str:
    return "fp32" if device == "cpu" else dtype


def _crash(where: str) -> None:
    """Test hook: ARCHC_BENCH_CRASH=family (its child aborts at start) or family:dtype:batch:prompt
    (aborts before that case), comma-separated: what a CUDA fault or a segfault does to the child."""
    if where in filter(None, os.environ.get("ARCHC_BENCH_CRASH", "").split(",")):
        print(f"ARCHC_BENCH_CRASH: aborting at {where}", flush=True)
        os.abort()


CUDA_FAULTS = ("illegal memory access", "CUDA error", "CUDA failure", "CUBLAS_STATUS", "cudaError", "misaligned address")


def run_export(job_path: Path) -> int:
    """CPU only: the ONNX models the group's ort cases will load, into the work dir."""
    import torch

    from archc.bench.harness import ort_export

    torch.set_num_threads(4)
    job = json.loads(job_path.read_text())
    g = job["group"]
    graph = _graph(g["family"], job["tiny"])
    dtype = _run_dtype(g["dtype"], job["device"])
    target = "cuda" if job["device"] == "cuda" else "portable"
    # one `--logits all` export for every case: generation feeds logits_start = -1 (archc.runner), so no
    # shape needs the pruned `last` head any more
    if any(n.startswith("ort") for c in g["cases"] for n in c["backends"]):
        ort_export(Path(job["work_dir"]), graph, target, dtype, "all", log=lambda m: print(m.strip(), flush=True))
    return 0


def run_group(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    g, device = job["group"], job["device"]
    _crash(g["family"])

    import torch
    from rich.console import Console

    from archc.bench.harness import Bench, Shape, environment, measure_limits, ort_model_dir, render

    if device == "cpu":  # the CPU run checks the orchestration; one thread keeps it quick on a shared machine
        torch.set_num_threads(1)
    console = Console(width=150, force_terminal=False)
    result_path = Path(job["result"])
    res: dict = {"runs": [], "skipped": [], "exports": []}
    limits = job["limits"]
    if limits is None:
        limits = measure_limits(device, dtypes=("fp16", "bf16") if device == "cuda" else ("fp32",))
        console.print(f"limits: copy {limits['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
                      + ", ".join(f"GEMM {k} {v / 1e12:.0f} TFLOP/s" for k, v in limits["gemm_flops_per_s"].items()))
        res["limits"] = limits
    if job["need_env"]:
        res["environment"] = environment()
    _write(result_path, res)

    dtype = _run_dtype(g["dtype"], device)
    graph = _graph(g["family"], job["tiny"])
    target = "cuda" if device == "cuda" else "portable"
    res["exports"] = sorted({str(ort_model_dir(Path(job["work_dir"]), graph, target, dtype, "all"))
                             for c in g["cases"] if any(n.startswith("ort") for n in c["backends"])})
    names = list(dict.fromkeys(n for c in g["cases"] for n in c["backends"]))
    baseline = {n: job["baseline_repeats"] for n in names if not n.startswith("ort")}
    bench = Bench(graph, dtype=dtype, device=device, backends=names, repeats=job["repeats"], work_dir=job["work_dir"],
                  limits=limits, log=lambda m: console.print(m, markup=False, highlight=False))
    try:
        for c in g["cases"]:
            res["current"] = c["key"]
            _write(result_path, res)
            _crash(c["key"])
            if job["deadline"] is not None and time.time() > job["deadline"]:
                res["skipped"].append(dict(c, reason="--budget-s passed before the case started"))
                _write(result_path, res)
                continue
            bench.backend_names = c["backends"]
            bench.backend_repeats = {} if c["target"] else baseline  # the target comparisons keep every repeat
            console.print(f"{c['key']}: {', '.join(c['backends'])}", markup=False)
            run = bench.run(Shape(c["batch"], c["prompt"], job["new_tokens"]))
            run.update(family=g["family"], case=c["key"], requested_dtype=c["dtype"])
            res["runs"].append(run)
            render(run, limits, console)
            if c["key"] in os.environ.get("ARCHC_BENCH_FAULT", "").split(","):  # test hook: as if the first backend faulted
                run["backends"][0]["error"] = "RuntimeError: CUDA failure 700: an illegal memory access was encountered (ARCHC_BENCH_FAULT)"
            fault = next((b for b in run["backends"] if b["error"] and any(f in b["error"] for f in CUDA_FAULTS)), None)
            if fault and (device == "cuda" or "ARCHC_BENCH_FAULT" in fault["error"]):  # the context is poisoned: nothing after this in this process is valid
                res["exit"] = f"CUDA fault in {fault['backend']} at {c['key']} ({fault['error'][:200]})"
                _write(result_path, res)
                sys.stdout.flush()
                os._exit(0)  # no teardown in a poisoned context (it can hang or fault again)
            _write(result_path, res)
    finally:
        bench.close()
    return 0


# ------------------------------------------------------------------------------------------------
# Detached runs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return False


def status(out: Path, wait_s: float) -> int:
    """Print the state of the run writing `out`; wait up to wait_s for it to finish. 0 finished, 3 running, 2 unknown."""
    t_end = time.time() + wait_s
    last, last_t = None, 0.0
    while True:
        try:
            rep = json.loads(out.read_text())
            st = rep["state"]
        except (OSError, ValueError, KeyError):
            rep, st = None, None
        if st is None:
            line = f"{out}: no run state yet"
        else:
            running = f", running {st['running']} for {time.time() - st.get('running_since', time.time()):.0f} s" if st["running"] else ""
            line = (f"{'finished' if st['finished'] else 'running'}: {st['groups_done']}/{st['groups_total']} groups{running}, "
                    f"{len(rep['runs'])} cases measured, {len(rep['failed'])} failed, ~{st['estimate_left_s'] / 60:.0f} min left (estimate)")
            if st["finished"]:
                print(line, flush=True)
                return 0
            if not _alive(st["pid"]):
                print(line + f"; but its process {st['pid']} is gone (see the .log beside the JSON)", flush=True)
                return 2
        key = None if st is None else (st["groups_done"], st["running"], len(rep["runs"]), len(rep["failed"]))
        if key != last or time.time() - last_t > 60:  # on progress, else once a minute
            print(time.strftime("%H:%M:%S ") + line, flush=True)
            last, last_t = key, time.time()
        if time.time() >= t_end:
            return 3 if st else 2
        time.sleep(min(2, max(0.2, t_end - time.time())))


def detach(args) -> int:
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    if "--wait-s" in argv:
        k = argv.index("--wait-s")
        del argv[k:k + 2]
    argv = [a for a in argv if not a.startswith("--wait-s=")]
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()  # a previous run's file (replaced with --force, checked in main) must not read as this run's state
    log = log_of(out)
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "benchmarks.run_standard", *argv], stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=_py_env(), start_new_session=True)
    print(f"started pid {p.pid} in its own session; output in {log}; "
          f"poll with: {Path(__file__).name} --out {args.out} --status --wait-s 560", flush=True)
    if args.wait_s:
        deadline = time.time() + 30
        while not out.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        return status(out, max(0.0, args.wait_s - 1))
    return 0


# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON file (rewritten atomically after every case; an existing one: --force)")
    outputs.add_force(ap)
    ap.add_argument("--plan", action="store_true", help="print the groups, cases, backends and time estimate; run nothing")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (standard.TINY), prompts 8/12, batches 1/2, 4 new tokens")
    ap.add_argument("--families", default=",".join(standard.FAMILIES))
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--batches", default=None, help="restrict to these batch sizes (default: 1,16; --tiny 1,2)")
    ap.add_argument("--prompts", default=None, help="restrict to these prompt lengths (default: 512,2048; --tiny 8,12)")
    ap.add_argument("--backends", default=None, help="restrict every case to these backends")
    ap.add_argument("--skip", default="", help="comma list of family:dtype:batch:prompt to leave out")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128 (--tiny: 4)")
    ap.add_argument("--repeats", type=int, default=3, help="timed generate runs for ort and the LLaMA b1 fp16 targets")
    ap.add_argument("--baseline-repeats", type=int, default=2, help="timed generate runs of the other cases' baselines")
    ap.add_argument("--budget-s", type=float, default=None, help="start no group or case after this many seconds")
    ap.add_argument("--group-timeout-s", type=float, default=900, help="kill a group's child after this many seconds")
    ap.add_argument("--work-dir", default=None, help="ONNX exports; existing ones there are reused "
                    "(default: a fresh folder beside --out, .OUT.exports, removed at the end)")
    ap.add_argument("--keep-exports", action="store_true", help="keep each group's exports after it is done")
    ap.add_argument("--no-pre-export", dest="pre_export", action="store_false",
                    help="export in the group's child instead of ahead, in a CPU process beside the previous group")
    ap.add_argument("--detach", action="store_true", help="run in a new session (survives this command); output in OUT.log")
    ap.add_argument("--status", action="store_true", help="print the state of the run writing --out")
    ap.add_argument("--wait-s", type=float, default=0, help="with --detach/--status: wait up to this long for it to finish")
    ap.add_argument("--tier", help=argparse.SUPPRESS)
    ap.add_argument("--_group", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_export", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal or log gets '?' for the table borders, not an error
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    if args._group:
        return run_group(args._group)
    if args._export:
        return run_export(args._export)
    if args.tier:
        ap.error("--tier is gone: every group runs in one invocation; restrict with --families/--dtypes/--batches/--prompts")
    if args.new_tokens is None:
        args.new_tokens = 4 if args.tiny else 128
    if args.new_tokens < 2 or args.repeats < 1 or args.baseline_repeats < 1:
        ap.error("--new-tokens must be at least 2, --repeats and --baseline-repeats at least 1")
    bad = [f for f in args.families.split(",") if f not in standard.FAMILIES]
    if bad:
        ap.error(f"--families: unknown {', '.join(bad)}; choose from {', '.join(standard.FAMILIES)}")
    bad = [b for b in (args.backends or "").split(",") if b and b not in ALL_BACKENDS]
    if bad:
        ap.error(f"--backends: unknown {', '.join(bad)}; choose from {', '.join(ALL_BACKENDS)}")
    groups = plan(args)
    if args.plan:
        print_plan(groups, args)
        return 0
    if not args.out:
        ap.error("--out FILE is needed (or --plan)")
    if args.status:
        return status(args.out.resolve(), args.wait_s)
    # once, before anything runs; --detach's child gets the same argv (--force with it) and finds no file: detach removed it.
    # What the run replaces beside --out follows the same rule: the hidden folders it clears at the start (left by a
    # run that was killed, or the user's own) and, with --detach, OUT.log (which the child does not check: it is
    # started writing into it).
    outputs.check_outputs(ap, args.force, ("--out", args.out))
    out = args.out.resolve()
    outputs.check_folders(ap, args.force, "--out", run_dir_of(out), *([] if args.work_dir else [exports_of(out)]))
    if args.detach:
        outputs.check_outputs(ap, args.force, ("--out", log_of(out)))
    if args.detach:
        return detach(args)
    return run_parent(args, groups)


if __name__ == "__main__":
    from archc.errors import UserError

    try:
        sys.exit(main())
    except UserError as e:  # e.g. --out in a folder that cannot be written: one line, exit 2
        print(f"run_standard.py: {e}", file=sys.stderr)
        sys.exit(2)
