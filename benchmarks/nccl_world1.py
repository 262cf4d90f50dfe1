"""The distributed code paths on CUDA and NCCL with a world of one process (GPU).

No multi-GPU kind has been lent so far, so archc.parallel had only run on the CPU over gloo
(tests/dist). This runs what can run on one GPU: torchrun with one process, NCCL process groups, FSDP2's
fully_shard and the tensor-parallel plan on CUDA tensors, the distributed checkpoint, `archc compile` of it,
and `generate-tp`. It checks each against the one-process path on the same GPU:

- `archc train --parallel fsdp | tp | fsdp+tp --tp 1 --device cuda` under `torchrun --nproc-per-node 1`:
  the logged losses against `archc train --device cuda` without torchrun (same seed, data and steps);
- `archc compile` of each run folder (the sharded checkpoint gathered into one ONNX export) succeeds;
- `archc generate-tp RUN --device cuda` under torchrun against the same command with `--device cpu` (gloo):
  the same greedy tokens in float32.

A world of one is not a scaling or communication test: every collective is a copy. It shows that the
code runs on NCCL and CUDA at all. The JSON keeps every command's exit status and the tail of its output.

    NCCL_NVLS_ENABLE=0 python -m benchmarks.nccl_world1 --out results/nccl_world1.json
    python -m benchmarks.nccl_world1 --out x.json --device cpu     # the orchestration on a CPU (gloo)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import outputs

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "n_layers=2", "--set", "d_model=128", "--set", "attention.n_heads=4", "--set", "attention.kv_heads=2",
        "--set", "mlp.d_ff=256", "--set", "vocab_size=97", "--set", "max_seq_len=64",
        "--set", "training.schedule.warmup_steps=0", "--set", "training.optimizer.lr=0.01"]
STEPS = 6
# what KINDS.md asks of NCCL on these hosts (NVLink multicast off)
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], cwd: Path, torchrun: bool) -> dict:
    cmd = [sys.executable, "-m", "archc.cli", *argv]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", str(_port()),
               "-m", "archc.cli", *argv]
    env = dict(os.environ, **NCCL_ENV, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    return {"argv": (["torchrun", "--nproc-per-node", "1"] if torchrun else []) + ["archc", *argv], "rc": p.returncode,
            "stdout_tail": p.stdout[-600:], "stderr_tail": p.stderr[-1200:]}


def _losses(run: Path) -> dict[int, float]:
    log = run / "log.jsonl"
    if not log.exists():
        return {}
    return {r["step"]: r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out))
    import numpy as np

    out: dict = {"device": args.device, "steps": STEPS, "runs": {}, "compile": {}, "generate": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        np.random.default_rng(0).integers(0, 97, 40000).astype("<u2").tofile(t / "tok.bin")
        common = ["--data", "tok.bin", "--steps", str(STEPS), "--batch", "4", "--seq-len", "32", "--eval-every", "3",
                  "--device", args.device, *TINY]
        layouts = {"single": ([], False), "fsdp": (["--parallel", "fsdp"], True), "tp": (["--parallel", "tp"], True),
                   "fsdp+tp": (["--parallel", "fsdp+tp", "--tp", "1"], True)}
        for name, (extra, torchrun) in layouts.items():
            run = "run_" + name.replace("+", "_")
            r = _run(["train", "llama", "--out", run, *common, *extra], t, torchrun)
            r["losses"] = _losses(t / run)
            out["runs"][name] = r
            print(name, "rc", r["rc"], r["losses"], flush=True)
            c = _run(["compile", run, "-o", run + "_onnx", "--target", "cpu", "--dtype", "fp32"], t, False)
            out["compile"][name] = {"rc": c["rc"], "stderr_tail": c["stderr_tail"][-300:]}
        ref = out["runs"]["single"]["losses"]
        for name, r in out["runs"].items():
            common_steps = sorted(set(ref) & set(r["losses"]))
            r["max_abs_loss_diff_vs_single"] = max((abs(ref[s] - r["losses"][s]) for s in common_steps), default=None)
            r["steps_compared"] = len(common_steps)
        for dev in ("cpu", args.device):
            g = _run(["generate-tp", "run_fsdp", "--prompt-ids", "1,2,3", "--prompt-ids", "4,5,6", "--max-new-tokens", "8",
                      "--device", dev, "--dtype", "float32"], t, True)
            out["generate"][dev] = g
            print("generate-tp", dev, "rc", g["rc"], g["stdout_tail"].strip()[-200:], flush=True)
        out["generate_same_tokens"] = out["generate"]["cpu"]["stdout_tail"] == out["generate"][args.device]["stdout_tail"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: {"rc": v["rc"], "max_abs_loss_diff_vs_single": v["max_abs_loss_diff_vs_single"]}
                      for k, v in out["runs"].items()}), "generate_same_tokens", out["generate_same_tokens"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
