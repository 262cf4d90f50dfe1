// archc.GatedMLP's CUDA side (gated_mlp_cuda.cu), called from gated_mlp.cc when built with ARCHC_ORT_OPS_CUDA.
// Plain C++ types only, so gated_mlp.cc compiles with g++ without CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace archc_ops {

// The hand kernel takes at most this many rows (decode and small-batch decode); more rows go to cuBLAS.
constexpr int64_t kGemvMaxRows = 4;

// Whether the warp-per-row kernel can read these operands with 16-byte loads (K % 8 == 0, aligned pointers).
bool gemv_fits(const void* x, const void* w, int64_t rows, int64_t K);

// y[m, f] = silu(x[m] . W[f]) * (x[m] . W[F + f]) for m < rows (<= kGemvMaxRows), one warp per f.
// Returns an empty string or the CUDA error's text.
std::string launch_gemv_swiglu(const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t F, void* stream);

// cuBLAS, opened from the process (onnxruntime's CUDA provider has loaded it) at kernel creation.
struct Blas;
Blas* blas_open(std::string* err);
void blas_close(Blas* b);
size_t blas_workspace_bytes(const Blas* b);

// c[m, :] = x[m] @ W^T ([rows, 2F], fp32) with cuBLAS on `stream`, then y = silu(c[:, :F]) * c[:, F:].
// `workspace` (blas_workspace_bytes) and `c` (rows * 2F floats) are scratch the caller owns until the stream is done.
std::string gemm_swiglu(Blas* b, const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t F,
                        void* c, void* workspace, void* stream);

// archc.GatedMLPNBits (int4 codes as MatMulNBits stores them: B [2F, K / 32, 16], scales [2F, K / 32] fp16, zero point 8).
// Whether the int4 kernel takes it: rows <= kGemvMaxRows, block_size 32, K a whole number of blocks, x (fp32, padded)
// fits the default 48 KB of shared memory, x and B 16-byte aligned.
bool q4_gemv_fits(const void* x, const void* b, int64_t rows, int64_t K, int64_t block_size);

// y[m, f] = silu(x[m] . Wg[f]) * (x[m] . Wu[f]) with W dequantized on the fly, one warp per f (reads rows f and F + f).
std::string launch_gemv_swiglu_q4(const void* x, const void* b, const void* scales, void* y, int64_t rows, int64_t K, int64_t F,
                                  void* stream);

// w [N, K] fp16 = (q - 8) * scale from B [N, k_blocks, block_size / 2] and scales [N, k_blocks] (any even block_size;
// a last block's padding is dropped): what the cuBLAS path of GatedMLPNBits multiplies by.
std::string dequant_q4(const void* b, const void* scales, void* w, int64_t N, int64_t K, int64_t k_blocks, int64_t block_size,
                       void* stream);

}  // namespace archc_ops
