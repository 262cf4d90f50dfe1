// archc.GatedMLP on CUDA: a warp-per-row kernel for up to 4 rows, cuBLAS + one silu*mul kernel beyond.
//
// Why a hand kernel: at M = 1 a decode step's gated MLP is memory-bound, and onnxruntime runs it as two cuBLAS
// GEMMs (~40-55% of the copy bandwidth at these small-N shapes), a SiLU and a Mul. One kernel that streams the
// gate and up rows of W in the same warp and stores silu(g) * u reached 83% of the bandwidth on an H200
// (benchmarks/gemv_kernel_probe.py, benchmarks/RESULTS.md "Hand-written M = 1 kernels against cuBLAS").
//
// cuBLAS is not linked: it is looked up in the process with dlopen when a kernel is created. onnxruntime's CUDA
// provider links it and is loaded before any CUDA kernel is created, so the library finds the very copy the
// provider uses, and the .so carries no path to a CUDA installation (cudart is linked statically by nvcc).
// The five entry points are declared below from cuBLAS's documented C ABI (enums are ints), so the build needs
// nvcc alone, not cuBLAS's headers.
#include "gated_mlp_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <mutex>

namespace archc_ops {
namespace {

// Each lane reads 16-byte vectors (8 halves); U vectors of a weight row (and of each x row) are loaded before any is
// used, so a lane keeps U weight loads in flight: what hides the memory latency when M is 1. The gate row is read, then
// the up row, as benchmarks/gemv_kernel_probe.py's measured kernel does (13.3 us on the TinyLlama shape, H200).
constexpr int U = 4;
constexpr int WARPS = 4;  // 128 threads a block; one output column f per warp

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  const half2* ah = reinterpret_cast<const half2*>(&a);
  const half2* bh = reinterpret_cast<const half2*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 p = __half22float2(ah[i]), q = __half22float2(bh[i]);
    s += p.x * q.x + p.y * q.y;
  }
  return s;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

// Both gated kernels' end: each lane holds partial gate and up sums for ROWS rows of output column f; the warp sums
// them and lane 0 stores silu(g) * u, rounded once to fp16.
template <int ROWS>
__device__ __forceinline__ void store_swiglu(float* g, float* u, half* __restrict__ y, int F, int f, int lane) {
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    g[r] = warp_sum(g[r]);
    u[r] = warp_sum(u[r]);
  }
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < ROWS; ++r) y[(size_t)r * F + f] = __float2half(silu(g[r]) * u[r]);
}

// acc[r] += x[r] . row over the warp's lanes (before the warp sum), for ROWS rows of x: the row read once for all.
template <int ROWS>
__device__ __forceinline__ void row_dot(const uint4* __restrict__ row, const uint4* __restrict__ xv, int KV, int lane,
                                        float* acc) {
  for (int k0 = lane; k0 < KV; k0 += 32 * U) {
    uint4 wv[U], xr[ROWS][U];
#pragma unroll
    for (int j = 0; j < U; ++j) {
      const int k = k0 + 32 * j;
      const bool in = k < KV;
      wv[j] = in ? __ldcs(row + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int r = 0; r < ROWS; ++r) xr[r][j] = in ? __ldg(xv + (size_t)r * KV + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < U; ++j)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[r] += dot8(xr[r][j], wv[j]);
  }
}

// One warp per f: the gate row W[f] and the up row W[F + f] are read once for all ROWS rows of x (the weights are
// the bytes that matter; x is a few KB and stays in L1/L2). fp32 accumulation, a warp-shuffle sum.
template <int ROWS>
__global__ void gemv_swiglu_kernel(const half* __restrict__ x, const half* __restrict__ w, half* __restrict__ y,
                                   int K, int F) {
  const int f = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (f >= F) return;
  const int KV = K / 8;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float g[ROWS] = {}, u[ROWS] = {};
  row_dot<ROWS>(reinterpret_cast<const uint4*>(w + (size_t)f * K), xv, KV, lane, g);
  row_dot<ROWS>(reinterpret_cast<const uint4*>(w + (size_t)(F + f) * K), xv, KV, lane, u);
  store_swiglu<ROWS>(g, u, y, F, f, lane);
}

// y[m, f] = silu(c[m, f]) * c[m, F + f] over the fp32 [rows, 2F] product cuBLAS wrote.
__global__ void silu_mul_kernel(const float* __restrict__ c, half* __restrict__ y, int64_t rows, int64_t F) {
  const int64_t n = rows * F;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = i / F, f = i - m * F;
    y[i] = __float2half(silu(c[m * 2 * F + f]) * c[m * 2 * F + F + f]);
  }
}

std::string cuda_error(const char* what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(e);
}

template <int ROWS>
void launch(const void* x, const void* w, void* y, int K, int F, cudaStream_t s) {
  const int blocks = (F + WARPS - 1) / WARPS;
  gemv_swiglu_kernel<ROWS><<<blocks, 32 * WARPS, 0, s>>>(static_cast<const half*>(x), static_cast<const half*>(w),
                                                         static_cast<half*>(y), K, F);
}

}  // namespace

bool gemv_fits(const void* x, const void* w, int64_t rows, int64_t K) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return rows >= 1 && rows <= kGemvMaxRows && K % 8 == 0 && K <= (int64_t)1 << 30 && aligned(x) && aligned(w);
}

std::string launch_gemv_swiglu(const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t F, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (rows) {
    case 1: launch<1>(x, w, y, (int)K, (int)F, s); break;
    case 2: launch<2>(x, w, y, (int)K, (int)F, s); break;
    case 3: launch<3>(x, w, y, (int)K, (int)F, s); break;
    case 4: launch<4>(x, w, y, (int)K, (int)F, s); break;
    default: return "gemv_swiglu: rows must be 1..4";
  }
  return cuda_error("gemv_swiglu kernel launch");
}

// ------------------------------------------------------------------------------------------------------------
// archc.GatedMLPNBits: int4 codes as MatMulNBits stores them (exporters/quantize.py), symmetric, block_size 32.
//
// One warp per output column f reads gate row f and up row F + f of B: one 16-byte load is one whole 32-value block
// (its 32 codes, first in the low nibble), a lane takes blocks lane, lane + 32, ... with Q4_U blocks of each row (2 Q4_U
// 16-byte loads) in flight. x is staged once per thread block in shared memory as fp32 (the conversion done once, not
// per weight), each 32-value block padded to 36 floats so the 8 lanes of a 16-byte shared-memory phase, which read
// consecutive blocks, hit distinct banks. Dequantization without integer-to-float conversions: a code q placed in the
// top mantissa bits of 1.0f reads as 1 + q / 16, so for a block sum x (q - 8) = 16 sum x (1 + q / 16) - 24 sum x,
// one scale multiply per block; fp32 accumulation throughout, silu(g) * u rounded once to fp16.

namespace {

constexpr int Q4_BLOCK = 32;  // values per quantization block: 16 bytes of codes, one uint4 load
constexpr int Q4_PAD = 36;    // floats per staged block of x (32 + 4: bank-conflict-free 16-byte reads, see above)
constexpr int Q4_WARPS = 8;   // 256 threads a block, one f per warp: x is staged once for 8 columns
constexpr int Q4_U = 2;       // blocks of each row per lane per step: gate + up = 4 16-byte loads in flight
constexpr size_t Q4_SMEM_MAX = 48 * 1024;  // the default dynamic shared-memory limit (no opt-in attribute needed)

// Code t (0..7) of a 32-bit word of a block (values 8w .. 8w + 7, first in the low nibble) as the float 1 + q / 16.
__device__ __forceinline__ float code_f(uint32_t v, int t) {
  const int sh = 19 - 4 * t;  // nibble t to bits 19..22, the top of the mantissa
  const uint32_t m = sh >= 0 ? (v << sh) : (v >> -sh);
  return __uint_as_float((m & 0x00780000u) | 0x3F800000u);
}

// Loads of one step of a lane: Q4_U blocks of the gate row and of the up row (16 bytes each) and their scales.
__device__ __forceinline__ void q4_load(const uint4* __restrict__ bg, const uint4* __restrict__ bu, const half* __restrict__ sg,
                                        const half* __restrict__ su, int j0, int KB, uint4 (&wg)[Q4_U], uint4 (&wu)[Q4_U],
                                        float (&cg)[Q4_U], float (&cu)[Q4_U]) {
#pragma unroll
  for (int i = 0; i < Q4_U; ++i) {
    const int j = j0 + 32 * i;
    const bool in = j < KB;
    wg[i] = in ? __ldcs(bg + j) : make_uint4(0, 0, 0, 0);
    wu[i] = in ? __ldcs(bu + j) : make_uint4(0, 0, 0, 0);
    cg[i] = in ? __half2float(__ldg(sg + j)) : 0.f;
    cu[i] = in ? __half2float(__ldg(su + j)) : 0.f;
  }
}

// Resident blocks per SM the register budget must allow: at M = 1 the TinyLlama shape's F / Q4_WARPS = 704 blocks then fit
// 132 SMs in one wave (6 x 132 = 792; at 48 registers only 5 fit: 660, and 44 blocks ran as a second wave).
constexpr int q4_min_blocks(int rows) { return rows == 1 ? 6 : 2; }  // rows 2..4: ~110-125 registers, no spills

template <int ROWS>
__global__ void __launch_bounds__(32 * Q4_WARPS, q4_min_blocks(ROWS))
    gemv_swiglu_q4_kernel(const half* __restrict__ x, const uint4* __restrict__ b, const half* __restrict__ scales,
                          half* __restrict__ y, int K, int F) {
  extern __shared__ float4 xs4[];  // [ROWS][KB][Q4_PAD / 4]
  const int KB = K / Q4_BLOCK;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int f = blockIdx.x * Q4_WARPS + warp;
  const bool live = f < F;  // a warp past F still helps stage x (every thread reaches the barrier)
  const size_t fg = live ? (size_t)f : 0, fu = live ? (size_t)(F + f) : 0;
  const uint4* bg = b + fg * KB;
  const uint4* bu = b + fu * KB;
  const half* sg = scales + fg * KB;
  const half* su = scales + fu * KB;
  // The first step's weight loads go out before x is staged: they do not depend on x, and at M = 1 (K = 2048: 2 blocks
  // per lane per row) they are all of the warp's weight traffic, so the staging's latency hides under theirs.
  uint4 wg[Q4_U], wu[Q4_U];
  float cg[Q4_U], cu[Q4_U];
  if (live) q4_load(bg, bu, sg, su, lane, KB, wg, wu, cg, cu);
  const uint2* x4 = reinterpret_cast<const uint2*>(x);
  for (int i = threadIdx.x; i < ROWS * K / 4; i += blockDim.x) {
    const int e = 4 * i, r = e / K, k = e - r * K;
    const uint2 v = __ldg(x4 + i);
    const float2 lo = __half22float2(*reinterpret_cast<const half2*>(&v.x));
    const float2 hi = __half22float2(*reinterpret_cast<const half2*>(&v.y));
    xs4[((r * KB + k / Q4_BLOCK) * Q4_PAD + k % Q4_BLOCK) / 4] = make_float4(lo.x, lo.y, hi.x, hi.y);
  }
  __syncthreads();
  if (!live) return;
  float g[ROWS] = {}, u[ROWS] = {};
  for (int j0 = lane; j0 < KB; j0 += 32 * Q4_U) {
    if (j0 != lane) q4_load(bg, bu, sg, su, j0, KB, wg, wu, cg, cu);
#pragma unroll
    for (int i = 0; i < Q4_U; ++i) {
      const int j = j0 + 32 * i;
      if (j >= KB) break;
      const uint32_t gw[4] = {wg[i].x, wg[i].y, wg[i].z, wg[i].w}, uw[4] = {wu[i].x, wu[i].y, wu[i].z, wu[i].w};
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const float4* xb = xs4 + (size_t)(r * KB + j) * (Q4_PAD / 4);
        float dg = 0.f, du = 0.f, sx = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const float4 a = xb[2 * w], c = xb[2 * w + 1];
          const float xv[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
          for (int t = 0; t < 8; ++t) {
            dg = fmaf(xv[t], code_f(gw[w], t), dg);
            du = fmaf(xv[t], code_f(uw[w], t), du);
            sx += xv[t];
          }
        }
        // sum x (q - 8) = 16 sum x (1 + q / 16) - 24 sum x
        g[r] = fmaf(cg[i], fmaf(16.f, dg, -24.f * sx), g[r]);
        u[r] = fmaf(cu[i], fmaf(16.f, du, -24.f * sx), u[r]);
      }
    }
  }
  store_swiglu<ROWS>(g, u, y, F, f, lane);
}

size_t q4_smem_bytes(int64_t rows, int64_t K) { return sizeof(float) * (size_t)rows * (size_t)(K / Q4_BLOCK) * Q4_PAD; }

template <int ROWS>
void launch_q4(const void* x, const void* b, const void* scales, void* y, int K, int F, cudaStream_t s) {
  const int blocks = (F + Q4_WARPS - 1) / Q4_WARPS;
  gemv_swiglu_q4_kernel<ROWS><<<blocks, 32 * Q4_WARPS, q4_smem_bytes(ROWS, K), s>>>(
      static_cast<const half*>(x), static_cast<const uint4*>(b), static_cast<const half*>(scales), static_cast<half*>(y), K, F);
}

// One thread per byte of B: its two codes, (q - 8) * scale, to w [N, K] (the last block's padding dropped).
__global__ void dequant_q4_kernel(const uint8_t* __restrict__ b, const half* __restrict__ scales, half* __restrict__ w, int N,
                                  int K, int KB, int blob) {
  const int total = N * KB * blob;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int n = i / (KB * blob), rem = i - n * KB * blob, j = rem / blob, byte = rem - j * blob;
    const uint8_t v = b[i];
    const float sc = __half2float(scales[n * KB + j]);
    const int k = j * 2 * blob + 2 * byte;
    if (k < K) w[(size_t)n * K + k] = __float2half(float((int)(v & 15) - 8) * sc);
    if (k + 1 < K) w[(size_t)n * K + k + 1] = __float2half(float((int)(v >> 4) - 8) * sc);
  }
}

}  // namespace

bool q4_gemv_fits(const void* x, const void* b, int64_t rows, int64_t K, int64_t block_size) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return rows >= 1 && rows <= kGemvMaxRows && block_size == Q4_BLOCK && K % Q4_BLOCK == 0 &&
         q4_smem_bytes(rows, K) <= Q4_SMEM_MAX && aligned(x) && aligned(b);
}

std::string launch_gemv_swiglu_q4(const void* x, const void* b, const void* scales, void* y, int64_t rows, int64_t K, int64_t F,
                                  void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (rows) {
    case 1: launch_q4<1>(x, b, scales, y, (int)K, (int)F, s); break;
    case 2: launch_q4<2>(x, b, scales, y, (int)K, (int)F, s); break;
    case 3: launch_q4<3>(x, b, scales, y, (int)K, (int)F, s); break;
    case 4: launch_q4<4>(x, b, scales, y, (int)K, (int)F, s); break;
    default: return "gemv_swiglu_q4: rows must be 1..4";
  }
  return cuda_error("gemv_swiglu_q4 kernel launch");
}

std::string dequant_q4(const void* b, const void* scales, void* w, int64_t N, int64_t K, int64_t k_blocks, int64_t block_size,
                       void* stream) {
  const int64_t total = N * k_blocks * (block_size / 2);
  const int threads = 256;
  const int blocks = (int)std::min<int64_t>((total + threads - 1) / threads, 65535 * 4);
  dequant_q4_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(b), static_cast<const half*>(scales), static_cast<half*>(w), (int)N, (int)K, (int)k_blocks,
      (int)(block_size / 2));
  return cuda_error("dequant_q4 kernel launch");
}

// ------------------------------------------------------------------------------------------------------------
// cuBLAS through dlopen

namespace {
using cublasHandle_t = void*;  // cublasContext*
using cublasStatus_t = int;
constexpr cublasStatus_t CUBLAS_STATUS_SUCCESS = 0;
constexpr int CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;  // cublasOperation_t
constexpr int CUBLAS_COMPUTE_32F = 68;         // cublasComputeType_t
constexpr int CUBLAS_GEMM_DEFAULT = -1;        // cublasGemmAlgo_t
using CreateFn = cublasStatus_t (*)(cublasHandle_t*);
using DestroyFn = cublasStatus_t (*)(cublasHandle_t);
using SetStreamFn = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
using SetWorkspaceFn = cublasStatus_t (*)(cublasHandle_t, void*, size_t);
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, int transa, int transb, int m, int n, int k, const void* alpha,
                                    const void* A, cudaDataType Atype, int lda, const void* B, cudaDataType Btype,
                                    int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc, int compute,
                                    int algo);
}  // namespace

struct Blas {
  CreateFn create = nullptr;
  DestroyFn destroy = nullptr;
  SetStreamFn set_stream = nullptr;
  SetWorkspaceFn set_workspace = nullptr;
  GemmExFn gemm_ex = nullptr;
  cublasHandle_t handle = nullptr;
  size_t workspace_bytes = 0;
  // onnxruntime may run one session from several threads: the handle's stream and workspace are set per call,
  // so setting them and enqueueing the GEMM happen under this lock (all host-side, nothing waits on the GPU).
  std::mutex lock;
};

namespace {

void* find_cublas() {
  // Already loaded by onnxruntime's CUDA provider (RTLD_NOLOAD finds it by its soname), else the usual search.
  for (int flags : {RTLD_NOW | RTLD_NOLOAD, RTLD_NOW})
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"})
      if (void* h = dlopen(name, flags)) return h;
  return nullptr;
}

template <typename T>
bool sym(void* lib, const char* name, T* out) {
  *out = reinterpret_cast<T>(dlsym(lib, name));
  return *out != nullptr;
}

}  // namespace

Blas* blas_open(std::string* err) {
  void* lib = find_cublas();
  if (!lib) {
    *err = "cuBLAS (libcublas.so.13/.12) is not loaded in this process and dlopen cannot find it";
    return nullptr;
  }
  auto* b = new Blas;
  if (!sym(lib, "cublasCreate_v2", &b->create) || !sym(lib, "cublasDestroy_v2", &b->destroy) ||
      !sym(lib, "cublasSetStream_v2", &b->set_stream) || !sym(lib, "cublasSetWorkspace_v2", &b->set_workspace) ||
      !sym(lib, "cublasGemmEx", &b->gemm_ex)) {
    *err = "cuBLAS lacks cublasCreate_v2/SetStream_v2/SetWorkspace_v2/GemmEx";
    delete b;
    return nullptr;
  }
  if (b->create(&b->handle) != CUBLAS_STATUS_SUCCESS) {
    *err = "cublasCreate failed";
    delete b;
    return nullptr;
  }
  // cuBLAS's advice for its workspace: 32 MiB on Hopper and newer, 4 MiB before. It is scratch from onnxruntime's
  // allocator per call (set with cublasSetWorkspace), never cuBLAS's own pool, which may cudaMalloc: not allowed
  // while onnxruntime captures a CUDA graph.
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  b->workspace_bytes = (major >= 9 ? 32u : 4u) << 20;
  return b;
}

void blas_close(Blas* b) {
  if (!b) return;
  if (b->handle) b->destroy(b->handle);
  delete b;
}

size_t blas_workspace_bytes(const Blas* b) { return b->workspace_bytes; }

std::string gemm_swiglu(Blas* b, const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t F, void* c,
                        void* workspace, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const float one = 1.f, zero = 0.f;
  {
    std::lock_guard<std::mutex> g(b->lock);
    // cublasSetStream resets the workspace to cuBLAS's own pool: the workspace is set after it, every call.
    if (b->set_stream(b->handle, s) != CUBLAS_STATUS_SUCCESS) return "cublasSetStream failed";
    if (b->set_workspace(b->handle, workspace, b->workspace_bytes) != CUBLAS_STATUS_SUCCESS)
      return "cublasSetWorkspace failed";
    // Row-major c[rows, 2F] = x[rows, K] @ W[2F, K]^T is column-major c^T[2F, rows] = (W viewed as K x 2F)^T @ x^T.
    cublasStatus_t st = b->gemm_ex(b->handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)(2 * F), (int)rows, (int)K, &one, w,
                                   CUDA_R_16F, (int)K, x, CUDA_R_16F, (int)K, &zero, c, CUDA_R_32F, (int)(2 * F),
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) return "cublasGemmEx failed (status " + std::to_string((int)st) + ")";
  }
  const int64_t n = rows * F;
  const int threads = 256;
  const int blocks = (int)std::min<int64_t>((n + threads - 1) / threads, 65535);
  silu_mul_kernel<<<blocks, threads, 0, s>>>(static_cast<const float*>(c), static_cast<half*>(y), rows, F);
  return cuda_error("silu_mul kernel launch");
}

}  // namespace archc_ops
