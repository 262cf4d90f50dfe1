"""archc's fused decode-projection kernels (exporters/ort_ops/gated_mlp_cuda.cu) on this card: right, and how fast?

    python3 -m benchmarks.fused_gemv_probe --out out/fused_gemv.json

The kernels behind the ops archc.Linear(-NBits) and archc.GatedMLP(-NBits) fold a layer's RMSNorm into the projection
that reads it and the residual Add (or SwiGLU) into the projection that writes it, so a decode step's layer is four
projection kernels around attention instead of those four plus two SkipSimplifiedLayerNormalization launches. This
probe compiles the very .cu the op library is built from (torch.utils.cpp_extension, the card's nvcc) with a small
torch binding, so the kernels are checked and timed without onnxruntime:

1. Checked against torch written from the definitions, in fp32 from the same fp16 values: RMSNorm (Zhang & Sennrich
   2019) x * rsqrt(mean(x^2) + eps) * gamma, the product with W^T, plus the residual, or SwiGLU (Shazeer 2020)
   silu(x Wg^T) * (x Wu^T); int4 weights dequantized in torch from the codes as MatMulNBits stores them ((q - 8) *
   scale, block 32, the first code of a byte in the low nibble). Every rows 1..4, every split (warps per column),
   fp16 and int4, the decode shapes of LLaMA-1.1B and odd ones. A negative control (the reference without the norm,
   or without the residual) must be far off, so a kernel that silently skipped its prologue or epilogue fails.
2. Timed at M = 1 like benchmarks/gemv_kernel_probe.py: >= --weight-mb of distinct weights per shape (beyond the
   L2 cache), every product captured in one CUDA graph, CUDA events; for each split and for the split the library
   picks (0). cuBLAS's F.linear on the same fp16 weights is timed alongside (without the norm or the Add, which
   onnxruntime runs as separate kernels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import outputs
from benchmarks.gemv_layout import R, time_captured

OPS_DIR = Path(__file__).resolve().parent.parent / "exporters" / "ort_ops"

# LLaMA-1.1B's decode projections: (K, N, gated, norm, residual) as the fused lowering uses them
SHAPES = {
    "qkv": (2048, 2560, False, True, False),  # norm in front
    "o": (2048, 2048, False, False, True),  # residual behind
    "gate,up": (2048, 5632, True, True, False),  # norm in front, SwiGLU behind
    "down": (5632, 2048, False, False, True),  # residual behind
}
ODD = {"odd-norm": (96, 40, False, True, False), "odd-res": (1000, 33, False, False, True), "odd-gated": (4128, 7, True, True, False)}

CPP_SRC = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <optional>
#include "gated_mlp_cuda.h"

static archc_ops::GemvIO io_of(const torch::Tensor& x, int64_t N, const std::optional<torch::Tensor>& gamma, double eps,
                               const std::optional<torch::Tensor>& residual, bool gated, int64_t split, torch::Tensor& y,
                               int64_t unroll = 0, bool overlap = true) {
  archc_ops::GemvIO io;
  io.x = x.data_ptr();
  io.gamma = gamma ? gamma->data_ptr() : nullptr;
  io.eps = (float)eps;
  io.residual = residual ? residual->data_ptr() : nullptr;
  io.rows = x.size(0);
  io.K = x.size(1);
  io.N = N;
  io.gated = gated;
  io.split = (int)split;
  io.unroll = (int)unroll;
  io.overlap = overlap;
  y = torch::empty({io.rows, N}, x.options());
  io.y = y.data_ptr();
  return io;
}

torch::Tensor gemv(torch::Tensor x, torch::Tensor w, std::optional<torch::Tensor> gamma, double eps,
                   std::optional<torch::Tensor> residual, bool gated, int64_t split, int64_t unroll, bool overlap) {
  torch::Tensor y;
  auto io = io_of(x, gated ? w.size(0) / 2 : w.size(0), gamma, eps, residual, gated, split, y, unroll, overlap);
  TORCH_CHECK(archc_ops::gemv_fits(io, w.data_ptr()), "gemv_fits refused");
  auto err = archc_ops::launch_gemv(io, w.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), err);
  return y;
}

torch::Tensor gemv_q4(torch::Tensor x, torch::Tensor b, torch::Tensor scales, std::optional<torch::Tensor> gamma, double eps,
                      std::optional<torch::Tensor> residual, bool gated, int64_t split, bool overlap) {
  torch::Tensor y;
  auto io = io_of(x, gated ? b.size(0) / 2 : b.size(0), gamma, eps, residual, gated, split, y, 0, overlap);
  TORCH_CHECK(archc_ops::q4_gemv_fits(io, b.data_ptr(), 32), "q4_gemv_fits refused");
  auto err = archc_ops::launch_gemv_q4(io, b.data_ptr(), scales.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), err);
  return y;
}

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor gamma, double eps) {
  auto y = torch::empty_like(x);
  auto err = archc_ops::rms_norm(x.data_ptr(), gamma.data_ptr(), (float)eps, y.data_ptr(), x.size(0), x.size(1),
                                 c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), err);
  return y;
}

torch::Tensor gemm(torch::Tensor x, torch::Tensor w, std::optional<torch::Tensor> residual) {
  std::string err;
  static archc_ops::Blas* blas = archc_ops::blas_open(&err);
  TORCH_CHECK(blas, err);
  auto y = torch::empty({x.size(0), w.size(0)}, x.options());
  auto ws = torch::empty({(int64_t)archc_ops::blas_workspace_bytes(blas)}, x.options().dtype(torch::kUInt8));
  err = archc_ops::gemm(blas, x.data_ptr(), w.data_ptr(), y.data_ptr(), x.size(0), x.size(1), w.size(0),
                        residual ? residual->data_ptr() : nullptr, ws.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), err);
  return y;
}
"""

FUNCTIONS = ["gemv", "gemv_q4", "rms_norm", "gemm"]
EPS = 1e-5
TOL = 2e-3  # max |y - ref| / max |ref|: fp16 output rounding is 5e-4 of a value; a wrong index or a lost term is O(1)
CONTROL_MIN = 0.05


def build(build_dir: Path):
    from torch.utils.cpp_extension import load_inline

    build_dir.mkdir(parents=True, exist_ok=True)
    cu = (OPS_DIR / "gated_mlp_cuda.cu").read_text()
    return load_inline("archc_fused_gemv_probe", CPP_SRC, cuda_sources=cu, functions=FUNCTIONS, extra_include_paths=[str(OPS_DIR)],
                       extra_cuda_cflags=["-O3"], build_directory=str(build_dir), verbose=False)


def q4_weights(Nw: int, K: int, gen):
    """Random int4 codes as MatMulNBits stores them (B [Nw, K / 32, 16] uint8, scales [Nw, K / 32] fp16) and the fp32
    weight they mean, dequantized here from the definition."""
    import torch

    b = torch.randint(0, 256, (Nw, K // 32, 16), dtype=torch.uint8, device="cuda", generator=gen)
    scales = (torch.rand(Nw, K // 32, device="cuda", generator=gen) * 0.01 + 0.002).half()
    lo, hi = (b & 15).int(), (b >> 4).int()
    q = torch.stack([lo, hi], dim=-1).reshape(Nw, K // 32, 32)  # value 2i is byte i's low nibble
    w = ((q - 8).float() * scales.float()[..., None]).reshape(Nw, K)
    return b, scales, w


def reference(x, w, gamma, residual, gated: bool, norm: bool):
    import torch.nn.functional as F

    xf = x.float()
    if norm:
        xf = xf * (xf.pow(2).mean(-1, keepdim=True) + EPS).rsqrt() * gamma.float()
    p = xf @ w.T
    if gated:
        n = w.shape[0] // 2
        return F.silu(p[:, :n]) * p[:, n:]
    return p + residual.float() if residual is not None else p


def rel(y, ref) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max())


def check(ext) -> dict:
    """Every shape, rows 1..4, split 0/1/2/4/8, fp16 and int4, against reference(); negative controls."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    worst, controls = {}, {}
    for name, (K, N, gated, norm, res) in {**SHAPES, **ODD}.items():
        Nw = 2 * N if gated else N
        w16 = (torch.randn(Nw, K, device="cuda", generator=gen) / K**0.5).half()
        b, scales, wq = q4_weights(Nw, K, gen) if K % 32 == 0 else (None, None, None)
        gamma = (torch.rand(K, device="cuda", generator=gen) + 0.5).half()
        for rows in (1, 2, 3, 4):
            x = (torch.randn(rows, K, device="cuda", generator=gen) * 3).half()
            residual = torch.randn(rows, N, device="cuda", generator=gen).half() if res else None
            for kind, w, run in (("fp16", w16.float(), lambda s: ext.gemv(x, w16, gamma if norm else None, EPS, residual, gated, s, 0, True)),
                                 ("int4", wq, lambda s: ext.gemv_q4(x, b, scales, gamma if norm else None, EPS, residual, gated, s, True))):
                staged = kind == "int4" or norm
                if w is None or (staged and rows * (K // 32) * 36 * 4 > 48 * 1024):
                    continue  # past the fits checks: x staged as fp32 beyond 48 KB of shared memory (the op runs cuBLAS)
                ref = reference(x, w, gamma, residual, gated, norm)
                for split in (0, 1, 2, 4, 8):
                    err = rel(run(split), ref)
                    key = f"{name} {kind}"
                    worst[key] = max(worst.get(key, 0.0), err)
                    if err > TOL:
                        raise SystemExit(f"kernel wrong: {key} rows {rows} split {split}: relative error {err:.2e}")
                if kind == "fp16" and rows == 1:  # the forced loads-in-flight of the timing below
                    for split in (1, 2, 4):
                        for unroll in (2, 4, 8):
                            err = rel(ext.gemv(x, w16, gamma if norm else None, EPS, residual, gated, split, unroll, False), ref)
                            if err > TOL:
                                raise SystemExit(f"kernel wrong: {name} fp16 split {split} unroll {unroll}: {err:.2e}")
                y = run(0)
                off = reference(x, w, gamma, None, gated, False) if norm else reference(x, w, gamma, None, gated, norm)
                c = rel(y, off)
                controls[f"{name} {kind} without {'norm' if norm else 'residual'}"] = c
                if c < CONTROL_MIN:
                    raise SystemExit(f"negative control too close: {name} {kind}: {c:.2e}")
    # beyond the hand kernels: the norm kernel and cuBLAS with the residual (what the ops run for prefill)
    x = (torch.randn(37, 2048, device="cuda", generator=gen) * 3).half()
    gamma = (torch.rand(2048, device="cuda", generator=gen) + 0.5).half()
    xn = ext.rms_norm(x, gamma, EPS)
    worst["rms_norm rows 37"] = rel(xn, x.float() * (x.float().pow(2).mean(-1, keepdim=True) + EPS).rsqrt() * gamma.float())
    w = (torch.randn(2560, 2048, device="cuda", generator=gen) / 2048**0.5).half()
    r = torch.randn(37, 2560, device="cuda", generator=gen).half()
    worst["gemm + residual rows 37"] = rel(ext.gemm(xn, w, r), xn.float() @ w.float().T + r.float())
    worst["gemm rows 37"] = rel(ext.gemm(xn, w, None), xn.float() @ w.float().T)
    controls["gemm without residual"] = rel(ext.gemm(xn, w, None), xn.float() @ w.float().T + r.float())
    for k in ("rms_norm rows 37", "gemm + residual rows 37", "gemm rows 37"):
        if worst[k] > TOL:
            raise SystemExit(f"kernel wrong: {k}: {worst[k]:.2e}")
    return {"relative_error_worst": worst, "negative_controls": controls}


def time_shape(ext, name: str, K: int, N: int, gated: bool, norm: bool, res: bool, weight_mb: int, iters: int) -> dict:
    import torch
    import torch.nn.functional as F

    Nw = 2 * N if gated else N
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, K, device="cuda", generator=gen).half()
    gamma = (torch.rand(K, device="cuda", generator=gen) + 0.5).half() if norm else None
    residual = torch.randn(1, N, device="cuda", generator=gen).half() if res else None
    out = {"shape": name, "K": K, "N": N, "gated": gated, "norm": norm, "residual": res}
    L16 = max(2, weight_mb * 2**20 // (Nw * K * 2))
    w16 = [(torch.randn(Nw, K, device="cuda", generator=gen) * 0.02).half() for _ in range(L16)]
    out["fp16_bytes"] = Nw * K * 2
    out["cublas_linear_us"] = time_captured(lambda: [F.linear(x, w) for _ in range(R) for w in w16], L16 * R, iters) * 1e6
    for split in (0, 1, 2, 4):
        for unroll in (0, 2, 4, 8) if split else (0,):
            out[f"fp16_split{split}_u{unroll}_us"] = time_captured(
                lambda: [ext.gemv(x, w, gamma, EPS, residual, gated, split, unroll, True) for _ in range(R) for w in w16], L16 * R,
                iters) * 1e6
    out["fp16_plain_us"] = time_captured(
        lambda: [ext.gemv(x, w, None, EPS, None, gated, 0, 0, True) for _ in range(R) for w in w16], L16 * R, iters) * 1e6
    del w16
    Lq = max(2, weight_mb * 2**20 // (Nw * K // 2))
    q = [q4_weights(Nw, K, gen)[:2] for _ in range(Lq)]
    out["int4_bytes"] = Nw * K // 2 + Nw * K // 32 * 2
    for split in (0, 1, 2, 4):
        out[f"int4_split{split}_us"] = time_captured(
            lambda: [ext.gemv_q4(x, b, s, gamma, EPS, residual, gated, split, True) for _ in range(R) for b, s in q], Lq * R, iters) * 1e6
    out["int4_plain_us"] = time_captured(
        lambda: [ext.gemv_q4(x, b, s, None, EPS, None, gated, 0, True) for _ in range(R) for b, s in q], Lq * R, iters) * 1e6
    return out


def time_chain(ext, layers: int, iters: int) -> dict:
    """A decode step's projections in order, layer after layer, each with its own weights (LLaMA-1.1B: 1.9 GB fp16, beyond
    the L2 cache): q|k|v + norm, o + residual, gate|up + norm + SwiGLU, down + residual, captured as one CUDA graph; with
    programmatic dependent launch (overlap) and without, fp16 and int4; cuBLAS's four F.linear per layer alongside
    (without the norms, SiLU, Mul and Adds onnxruntime runs as kernels of their own)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device="cuda").manual_seed(2)
    out = {"layers": layers}
    ins = {}
    for name, (K, N, gated, norm, res) in SHAPES.items():
        ins[name] = (torch.randn(1, K, device="cuda", generator=gen).half(),
                     (torch.rand(K, device="cuda", generator=gen) + 0.5).half() if norm else None,
                     torch.randn(1, N, device="cuda", generator=gen).half() if res else None, gated)
    w16 = [{n: (torch.randn(2 * N if g else N, K, device="cuda", generator=gen) * 0.02).half()
            for n, (K, N, g, _, _) in SHAPES.items()} for _ in range(layers)]
    out["cublas_4_linear_us"] = time_captured(lambda: [F.linear(ins[n][0], w) for lw in w16 for n, w in lw.items()], 1, iters) * 1e6
    for overlap in (False, True):
        out[f"fp16_overlap{int(overlap)}_us"] = time_captured(
            lambda: [ext.gemv(ins[n][0], w, ins[n][1], EPS, ins[n][2], ins[n][3], 0, 0, overlap) for lw in w16 for n, w in lw.items()],
            1, iters) * 1e6
    del w16
    wq = [{n: q4_weights(2 * N if g else N, K, gen)[:2] for n, (K, N, g, _, _) in SHAPES.items()} for _ in range(layers)]
    for overlap in (False, True):
        out[f"int4_overlap{int(overlap)}_us"] = time_captured(
            lambda: [ext.gemv_q4(ins[n][0], b, sc, ins[n][1], EPS, ins[n][2], ins[n][3], 0, overlap) for lw in wq for n, (b, sc) in lw.items()],
            1, iters) * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weight-mb", type=int, default=256, help="distinct weights per shape, in MB together")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--layers", type=int, default=22, help="layers of the decode step the projections are summed over")
    ap.add_argument("--build-dir", type=Path, default=Path("/tmp/archc_fused_gemv_probe"))
    ap.add_argument("--out", type=Path, help="JSON file (an existing one: --force)")
    outputs.add_force(ap)
    args = ap.parse_args()
    try:
        outputs.check_outputs(ap, args.force, ("--out", args.out))
    except ModuleNotFoundError:  # a bare card's torch, without archc's dependencies (pydantic): the same refusal, plainly
        if args.out and args.out.exists() and not args.force:
            print(f"{ap.prog}: --out {args.out}: exists; add --force to replace it", file=sys.stderr)
            raise SystemExit(2) from None
    import torch

    # Not archc.bench.harness: this probe runs on a card's bare torch (archc's package needs pydantic).
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name()}
    ext = build(args.build_dir)
    checks = check(ext)
    print(json.dumps(checks), flush=True)
    rows = []
    for name, spec in SHAPES.items():
        r = time_shape(ext, name, *spec, args.weight_mb, args.iters)
        print(json.dumps(r), flush=True)
        rows.append(r)
    per_layer = {k: sum(r[k] for r in rows) for k in rows[0] if k.endswith("_us")}
    chain = time_chain(ext, args.layers, args.iters)
    print(json.dumps({"chain": chain}), flush=True)
    result = {"environment": env, "checks": checks, "shapes": rows,
              "per_layer_us": per_layer, "chain_us": chain, "per_step_ms": {k: v * args.layers / 1e3 for k, v in per_layer.items()}}
    print(json.dumps({"per_layer_us": per_layer}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
