"""What would a hand-written M = 1 kernel give a decode step, against cuBLAS, on this card?

    python3 -m benchmarks.gemv_kernel_probe --out out/gemv_kernel.json

onnxruntime's CUDA provider runs every fp16 projection through cuBLAS, whose M = 1 kernels stream the
small-N LLaMA-1.1B projections at 35-55% of the copy bandwidth (benchmarks/RESULTS.md, "Measured
bottleneck"). The only way to another kernel inside onnxruntime is a custom-op library (C++ against
onnxruntime's C API headers, built with nvcc). Before building one, this probe measures what such a
kernel buys, with torch as the harness (torch.utils.cpp_extension compiles the kernels below with the
card's nvcc): for every projection shape of the decode step, L distinct fp16 weights (about
--weight-mb together, beyond the L2 cache), each product R times, captured as one CUDA graph and timed
with CUDA events (benchmarks.gemv_layout.time_captured).

Kernels (weights [N, K], torch's Linear layout, which archc's `WeightLayout.out_in` exports):
- `gemv`: one warp per ROWS output rows; each lane streams 16-byte vectors of the rows, fp32
  accumulation, a warp-shuffle reduction. Every block is independent, so all SMs stream at once.
- `gemv_swiglu`: the gated MLP's gate and up rows in the same warp, with silu(g) * u applied before
  the store: the gate|up GEMMs, the SiLU and the Mul (three launches and a [1, 2F] round trip) in one.
Each is checked against an fp32 torch product first (max abs error printed; a probe with a wrong
kernel would stop there). cuBLAS variants: F.linear on the same [N, K] weights; for the gated MLP,
two F.linear + silu * mul, as the ONNX decode step runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import outputs
from benchmarks.gemv_layout import R, time_captured

# [K -> N] per LLaMA-1.1B projection; "gate,up" is the gated MLP (two [K -> N] weights + SiLU * mul)
SHAPES = {"qkv": (2048, 2560), "o": (2048, 2048), "gate,up": (2048, 5632), "down": (5632, 2048), "head": (2048, 32000)}
PER_LAYER = ("qkv", "o", "gate,up", "down")  # the head runs once per step, the rest once per layer

CUDA_SRC = r"""
#include <cuda_fp16.h>
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>

// Lanes read 16-byte vectors (8 halves); U vectors per row are loaded before any is used, so each
// lane keeps ROWS * U loads in flight: what hides the memory latency at M = 1.
constexpr int U = 4;

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  const half2* ah = reinterpret_cast<const half2*>(&a);
  const half2* bh = reinterpret_cast<const half2*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 x = __half22float2(ah[i]), y = __half22float2(bh[i]);
    s += x.x * y.x + x.y * y.y;
  }
  return s;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[r] = dot(x, W[row0 + r]) for one warp; K % 8 == 0, rows past N are skipped by the caller's guard.
template <int ROWS>
__device__ __forceinline__ void rows_dot(const half* __restrict__ W, const uint4* __restrict__ xv,
                                         int row0, int N, int KV, int lane, float* acc) {
  for (int k0 = lane; k0 < KV; k0 += 32 * U) {
    uint4 w[ROWS][U];
    uint4 xr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int k = k0 + 32 * u;
      xr[u] = k < KV ? __ldg(xv + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
        w[r][u] = (k < KV && row0 + r < N)
                      ? __ldcs(reinterpret_cast<const uint4*>(W + (size_t)(row0 + r) * (KV * 8)) + k)
                      : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[r] += dot8(xr[u], w[r][u]);
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) acc[r] = warp_sum(acc[r]);
}

template <int ROWS>
__global__ void gemv_kernel(const half* __restrict__ W, const half* __restrict__ x, half* __restrict__ y, int N, int K) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  int row0 = warp * ROWS;
  if (row0 >= N) return;
  float acc[ROWS] = {};
  rows_dot<ROWS>(W, reinterpret_cast<const uint4*>(x), row0, N, K / 8, lane, acc);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
      if (row0 + r < N) y[row0 + r] = __float2half(acc[r]);
}

template <int ROWS>
__global__ void gemv_swiglu_kernel(const half* __restrict__ Wg, const half* __restrict__ Wu, const half* __restrict__ x,
                                   half* __restrict__ y, int N, int K) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  int row0 = warp * ROWS;
  if (row0 >= N) return;
  float g[ROWS] = {}, u[ROWS] = {};
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  rows_dot<ROWS>(Wg, xv, row0, N, K / 8, lane, g);
  rows_dot<ROWS>(Wu, xv, row0, N, K / 8, lane, u);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
      if (row0 + r < N) y[row0 + r] = __float2half(g[r] / (1.f + __expf(-g[r])) * u[r]);
}

constexpr int WARPS = 4;  // 128 threads a block

template <int ROWS>
torch::Tensor gemv_rows(torch::Tensor W, torch::Tensor x) {
  int N = W.size(0), K = W.size(1);
  auto y = torch::empty({1, N}, x.options());
  int blocks = (N + WARPS * ROWS - 1) / (WARPS * ROWS);
  gemv_kernel<ROWS><<<blocks, 32 * WARPS, 0, at::cuda::getCurrentCUDAStream()>>>(
      (const half*)W.data_ptr(), (const half*)x.data_ptr(), (half*)y.data_ptr(), N, K);
  return y;
}

template <int ROWS>
torch::Tensor swiglu_rows(torch::Tensor Wg, torch::Tensor Wu, torch::Tensor x) {
  int N = Wg.size(0), K = Wg.size(1);
  auto y = torch::empty({1, N}, x.options());
  int blocks = (N + WARPS * ROWS - 1) / (WARPS * ROWS);
  gemv_swiglu_kernel<ROWS><<<blocks, 32 * WARPS, 0, at::cuda::getCurrentCUDAStream()>>>(
      (const half*)Wg.data_ptr(), (const half*)Wu.data_ptr(), (const half*)x.data_ptr(), (half*)y.data_ptr(), N, K);
  return y;
}

torch::Tensor gemv(torch::Tensor W, torch::Tensor x, int64_t rows) {
  switch (rows) {
    case 1: return gemv_rows<1>(W, x);
    case 2: return gemv_rows<2>(W, x);
    case 4: return gemv_rows<4>(W, x);
  }
  TORCH_CHECK(false, "rows must be 1, 2 or 4");
}

torch::Tensor gemv_swiglu(torch::Tensor Wg, torch::Tensor Wu, torch::Tensor x, int64_t rows) {
  switch (rows) {
    case 1: return swiglu_rows<1>(Wg, Wu, x);
    case 2: return swiglu_rows<2>(Wg, Wu, x);
    case 4: return swiglu_rows<4>(Wg, Wu, x);
  }
  TORCH_CHECK(false, "rows must be 1, 2 or 4");
}
"""

CPP_SRC = """
torch::Tensor gemv(torch::Tensor W, torch::Tensor x, int64_t rows);
torch::Tensor gemv_swiglu(torch::Tensor Wg, torch::Tensor Wu, torch::Tensor x, int64_t rows);
"""


def build(build_dir: Path):
    from torch.utils.cpp_extension import load_inline

    build_dir.mkdir(parents=True, exist_ok=True)
    return load_inline("archc_gemv_probe", CPP_SRC, cuda_sources=CUDA_SRC, functions=["gemv", "gemv_swiglu"],
                       extra_cuda_cflags=["-O3", "--use_fast_math"], build_directory=str(build_dir), verbose=False)


def check(ext) -> dict:
    """The kernels against fp32 torch products on every probe shape (and an odd K and N)."""
    import torch
    import torch.nn.functional as F

    errs = {}
    for name, (K, N) in {**SHAPES, "odd": (2056, 1001)}.items():
        x = torch.randn(1, K, device="cuda", dtype=torch.float16)
        w = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02
        if name == "gate,up":
            w2 = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02
            ref = F.silu(x.float() @ w.float().T) * (x.float() @ w2.float().T)
            got = [ext.gemv_swiglu(w, w2, x, r) for r in (1, 2, 4)]
        else:
            ref = x.float() @ w.float().T
            got = [ext.gemv(w, x, r) for r in (1, 2, 4)]
        scale = ref.abs().max().item()
        errs[name] = max((g.float() - ref).abs().max().item() for g in got) / scale
        if errs[name] > 2e-3:  # fp16 output rounding is 5e-4 of the value; a wrong index is O(1)
            raise SystemExit(f"kernel wrong on {name}: relative error {errs[name]:.2e}")
    return errs


def time_shape(ext, name: str, K: int, N: int, weight_mb: int, iters: int, rows: int) -> dict:
    import torch
    import torch.nn.functional as F

    mats = 2 if name == "gate,up" else 1
    nbytes = K * N * 2 * mats
    L = max(2, weight_mb * 2**20 // nbytes)
    ws = [[torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(mats)] for _ in range(L)]
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)
    if mats == 2:
        cublas = lambda: [F.silu(F.linear(x, g)) * F.linear(x, u) for _ in range(R) for g, u in ws]  # noqa: E731
        kernel = lambda: [ext.gemv_swiglu(g, u, x, rows) for _ in range(R) for g, u in ws]  # noqa: E731
    else:
        cublas = lambda: [F.linear(x, w) for _ in range(R) for (w,) in ws]  # noqa: E731
        kernel = lambda: [ext.gemv(w, x, rows) for _ in range(R) for (w,) in ws]  # noqa: E731
    out = {"shape": name, "K": K, "N": N, "bytes": nbytes}
    out["cublas_us"] = time_captured(cublas, L * R, iters) * 1e6
    out["kernel_us"] = time_captured(kernel, L * R, iters) * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weight-mb", type=int, default=256, help="distinct weights per shape, in MB together")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rows", default="1,2,4", help="rows per warp to try (the best is reported per shape)")
    ap.add_argument("--layers", type=int, default=22, help="layers of the decode step the projection is summed over")
    ap.add_argument("--build-dir", type=Path, default=Path("/tmp/archc_gemv_probe"))
    ap.add_argument("--out", type=Path, help="JSON file (an existing one: --force)")
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out))
    from archc.bench.harness import environment, measure_limits

    lim = measure_limits("cuda", dtypes=("fp16",))
    bw = lim["copy_bytes_per_s"]
    ext = build(args.build_dir)
    errs = check(ext)
    print(json.dumps({"relative_error": errs}), flush=True)
    rows_out = []
    for name, (K, N) in SHAPES.items():
        best = None
        for rows in (int(r) for r in args.rows.split(",")):
            r = time_shape(ext, name, K, N, args.weight_mb, args.iters, rows)
            r["rows_per_warp"] = rows
            if best is None or r["kernel_us"] < best["kernel_us"]:
                best = r
        best["cublas_frac_bw"] = best["bytes"] / (best["cublas_us"] * 1e-6) / bw
        best["kernel_frac_bw"] = best["bytes"] / (best["kernel_us"] * 1e-6) / bw
        rows_out.append(best)
        print(json.dumps(best), flush=True)
    step = {k: sum(r[k] * (args.layers if r["shape"] in PER_LAYER else 1) for r in rows_out)
            for k in ("cublas_us", "kernel_us")}
    summary = {"decode_step_projections_us": step, "saved_us_per_token": step["cublas_us"] - step["kernel_us"]}
    print(json.dumps(summary), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": environment(), "limits": lim, "relative_error": errs,
                                        "rows": rows_out, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
