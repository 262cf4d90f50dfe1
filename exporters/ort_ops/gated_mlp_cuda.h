// archc's CUDA side (gated_mlp_cuda.cu), called from gated_mlp.cc when built with ARCHC_ORT_OPS_CUDA.
// Plain C++ types only, so gated_mlp.cc compiles with g++ without CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace archc_ops {

// The hand kernels take at most this many rows (decode and small-batch decode); more rows go to cuBLAS.
constexpr int64_t kGemvMaxRows = 4;

// One projection of the decode step and what is folded around it, in ONE kernel at rows <= kGemvMaxRows:
//   xn = gamma ? x * rsqrt(mean_K(x * x) + eps) * gamma : x     RMSNorm (Zhang & Sennrich 2019), in fp32, never rounded
//   p  = xn @ W^T                                               fp32 accumulation
//   y  = gated ? silu(p[:, :N]) * p[:, N:]                      SwiGLU (Shazeer 2020): W holds 2N rows, gate then up
//            : p + residual (when residual)                     the residual stream's Add
// with one rounding to fp16 at the store. residual and gated never come together (the ops do not offer it).
struct GemvIO {
  const void* x = nullptr;         // [rows, K] fp16
  const void* gamma = nullptr;     // [K] fp16, or nullptr: no norm
  float eps = 0.f;                 // the norm's epsilon (with gamma)
  const void* residual = nullptr;  // [rows, N] fp16, or nullptr
  void* y = nullptr;               // [rows, N] fp16
  int64_t rows = 0, K = 0, N = 0;  // N: output columns (F of a gated MLP, whose weight has 2F rows)
  bool gated = false;
  // Tuning knobs benchmarks/fused_gemv_probe.py forces; 0 (what the ops pass) lets the kernels choose.
  int split = 0;   // warps per output column: 1, 2, 4 or 8
  int unroll = 0;  // fp16 weight vectors in flight per lane and weight row, at one row: 2, 4 or 8
  // Programmatic dependent launch (sm_90+): the kernel starts streaming its weights before the previous kernel on the
  // stream has finished, and waits for it before touching x, residual or y. The probe turns it off to measure it.
  bool overlap = true;
};

// Whether the fp16 hand kernel can take it: 1 <= rows <= kGemvMaxRows, K % 8 == 0, x, gamma, w 16-byte aligned.
bool gemv_fits(const GemvIO& io, const void* w);

// y as above with W fp16 [N (2N gated), K] in torch's Linear layout. Empty string or the CUDA error's text.
std::string launch_gemv(const GemvIO& io, const void* w, void* stream);

// The same on int4 codes as MatMulNBits stores them (exporters/quantize.py): B [N', K / 32, 16] uint8, scales
// [N', K / 32] fp16, symmetric (zero point 8), block 32, the first code of a byte in the low nibble (N' = N, or 2N
// gated). q4_gemv_fits: rows <= kGemvMaxRows, block_size 32, K a whole number of blocks, x staged as fp32 within the
// default 48 KB of shared memory, x and B 16-byte aligned.
bool q4_gemv_fits(const GemvIO& io, const void* b, int64_t block_size);
std::string launch_gemv_q4(const GemvIO& io, const void* b, const void* scales, void* stream);

// ---- beyond the hand kernels (prefill, rows > kGemvMaxRows): a norm kernel, then cuBLAS ----

// out [rows, K] fp16 = x * rsqrt(mean_K(x * x) + eps) * gamma (fp32 inside), one block per row.
std::string rms_norm(const void* x, const void* gamma, float eps, void* out, int64_t rows, int64_t K, void* stream);

// cuBLAS, opened from the process (onnxruntime's CUDA provider has loaded it) at kernel creation.
struct Blas;
Blas* blas_open(std::string* err);
void blas_close(Blas* b);
size_t blas_workspace_bytes(const Blas* b);

// y [rows, N] fp16 = x @ W^T (+ residual: copied into y first unless it is y, then the GEMM with beta = 1), fp32
// accumulation.
// `workspace` (blas_workspace_bytes) is scratch the caller owns until the stream is done.
std::string gemm(Blas* b, const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t N, const void* residual,
                 void* workspace, void* stream);

// c[m, :] = x[m] @ W^T ([rows, 2F], fp16, fp32 accumulation) with cuBLAS on `stream`, then y = silu(c[:, :F]) * c[:, F:].
// `workspace` (blas_workspace_bytes) and `c` (rows * 2F halves) are scratch the caller owns until the stream is done.
std::string gemm_swiglu(Blas* b, const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t F,
                        void* c, void* workspace, void* stream);

// w [N, K] fp16 = (q - 8) * scale from B [N, k_blocks, block_size / 2] and scales [N, k_blocks] (any even block_size;
// a last block's padding is dropped): what the cuBLAS paths of the NBits ops multiply by.
std::string dequant_q4(const void* b, const void* scales, void* w, int64_t N, int64_t K, int64_t k_blocks, int64_t block_size,
                       void* stream);

}  // namespace archc_ops
