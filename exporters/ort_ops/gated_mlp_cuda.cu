// archc's decode-step projections on CUDA: warp-per-column kernels for up to 4 rows, on fp16 weights or on int4 codes as
// MatMulNBits stores them, with the RMSNorm in front and the residual Add or SwiGLU behind folded into the same kernel
// (GemvIO in gated_mlp_cuda.h); a norm kernel and cuBLAS beyond 4 rows.
//
// Why hand kernels: at M = 1 a decode step's projections are memory-bound and short. onnxruntime runs each as a cuBLAS
// GEMM (~40-55% of the copy bandwidth at these small-N shapes) or a MatMulNBits, and around them a SkipSimplifiedLayer-
// Normalization (residual Add + RMSNorm), a SiLU and a Mul: each a launch of 2-7 us set by latency, not bytes
// (benchmarks/RESULTS.md, "Measured bottleneck"). One kernel per projection that normalizes its input on the way in and
// adds the residual (or applies SwiGLU) on the way out leaves four launches per layer around attention. A gate|up kernel
// of this design reached 83% of the bandwidth on an H200 (benchmarks/gemv_kernel_probe.py).
//
// cuBLAS is not linked: it is looked up in the process with dlopen when a kernel is created. onnxruntime's CUDA
// provider links it and is loaded before any CUDA kernel is created, so the library finds the very copy the
// provider uses, and the .so carries no path to a CUDA installation (cudart is linked statically by nvcc).
// The entry points are declared below from cuBLAS's documented C ABI (enums are ints), so the build needs
// nvcc alone, not cuBLAS's headers.
#include "gated_mlp_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <mutex>

namespace archc_ops {
namespace {

constexpr int WARPS = 8;  // 256 threads a block; a column takes `split` consecutive warps of it

// GemvIO as the kernels take it (by value, in the kernel's parameter space).
struct Io {
  const half* x;
  const half* gamma;
  const half* residual;
  half* y;
  float eps;
  int K, N, split;
};

Io device_io(const GemvIO& io, int split) {
  return Io{static_cast<const half*>(io.x), static_cast<const half*>(io.gamma), static_cast<const half*>(io.residual),
            static_cast<half*>(io.y), io.eps, (int)io.K, (int)io.N, split};
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

// Programmatic dependent launch (sm_90+; launch_overlapped below): a projection kernel may be launched before the kernel
// ahead of it on the stream has finished. Its weights are constant, so each lane issues its first weight loads at once
// and only then waits for the previous grid (its x, residual and y are that grid's to finish with): the launch and the
// first DRAM round trip hide under the previous kernel's tail. After its main loop it lets the next such kernel launch.
// Both are no-ops in a kernel launched without the attribute, and compiled out below sm_90.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void let_next_grid_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Sums V per-lane values over the warp, then over the `split` consecutive warps of a column through shared memory.
// True in the one lane that then holds the column's sums (its part-0 warp's lane 0). Every thread of the block must
// call it (the barrier), live or not.
template <int V>
__device__ __forceinline__ bool column_sum(float (&v)[V], int split, int part, int lane, bool live) {
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = warp_sum(v[i]);
  if (split == 1) return live && lane == 0;
  __shared__ float red[WARPS][V];
  const int warp = threadIdx.x >> 5;
  if (lane == 0)
#pragma unroll
    for (int i = 0; i < V; ++i) red[warp][i] = v[i];
  __syncthreads();
  if (!live || part != 0 || lane != 0) return false;
  for (int p = 1; p < split; ++p)
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] += red[warp + p][i];
  return true;
}

// The column's store: acc[n * ROWS + r] are the sums x_r . W_n (NR = 2: gate, up), rstd[r] the norm's 1 / rms (1
// without a norm: W . (x * gamma * rstd) = rstd * (W . (x * gamma))). One rounding to fp16.
template <int ROWS, int NR>
__device__ __forceinline__ void store_column(const float* acc, const float* rstd, const Io& io, int col) {
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    float out;
    if (NR == 2) {
      out = silu(acc[r] * rstd[r]) * (acc[ROWS + r] * rstd[r]);
    } else {
      out = acc[r] * rstd[r];
      if (io.residual) out += __half2float(io.residual[(size_t)r * io.N + col]);
    }
    io.y[(size_t)r * io.N + col] = __float2half(out);
  }
}

// ------------------------------------------------------------------------------------------------------------
// x staged in shared memory as fp32 (the int4 kernel always; the fp16 kernel with a norm), times gamma with a norm,
// in blocks of 32 values padded to 36 floats: the 8 lanes of a 16-byte shared-memory phase read 8 consecutive 16- or
// 32-byte pieces, which the padding puts on distinct banks. The norm's sum of squares is reduced over the thread
// block on the way, so every thread ends with each row's 1 / rms: W . (x * gamma * rstd) = rstd * (W . (x * gamma)).

constexpr int XBLOCK = 32;                // staged values per padded block (also an int4 quantization block)
constexpr int XPAD = 36;                  // floats per staged block
constexpr size_t SMEM_MAX = 48 * 1024;    // the default dynamic shared-memory limit (no opt-in attribute needed)

size_t staged_bytes(int64_t rows, int64_t K) { return sizeof(float) * (size_t)rows * (size_t)(K / XBLOCK) * XPAD; }

template <int ROWS, bool NORM>
__device__ __forceinline__ void stage_x(const Io& io, float4* xs4, float (&rstd)[ROWS]) {
  const int K = io.K, KB = K / XBLOCK;
  float ss[ROWS] = {};
  const uint2* x4 = reinterpret_cast<const uint2*>(io.x);
  const uint2* g4 = reinterpret_cast<const uint2*>(io.gamma);
  for (int i = threadIdx.x; i < ROWS * K / 4; i += blockDim.x) {
    const int e = 4 * i, r = e / K, k = e - r * K;
    const uint2 v = __ldg(x4 + i);
    float2 lo = __half22float2(*reinterpret_cast<const half2*>(&v.x));
    float2 hi = __half22float2(*reinterpret_cast<const half2*>(&v.y));
    if (NORM) {
      const float sq = lo.x * lo.x + lo.y * lo.y + hi.x * hi.x + hi.y * hi.y;
#pragma unroll
      for (int q = 0; q < ROWS; ++q) ss[q] += q == r ? sq : 0.f;
      const uint2 gw = __ldg(g4 + k / 4);
      const float2 glo = __half22float2(*reinterpret_cast<const half2*>(&gw.x));
      const float2 ghi = __half22float2(*reinterpret_cast<const half2*>(&gw.y));
      lo.x *= glo.x, lo.y *= glo.y, hi.x *= ghi.x, hi.y *= ghi.y;
    }
    xs4[((r * KB + k / XBLOCK) * XPAD + k % XBLOCK) / 4] = make_float4(lo.x, lo.y, hi.x, hi.y);
  }
  if (NORM) {
    __shared__ float ss_part[WARPS][ROWS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) ss[r] = warp_sum(ss[r]);
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) ss_part[warp][r] = ss[r];
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      float t = 0.f;
#pragma unroll
      for (int q = 0; q < WARPS; ++q) t += ss_part[q][r];
      rstd[r] = rsqrtf(t / K + io.eps);
    }
  } else {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) rstd[r] = 1.f;
  }
  __syncthreads();
}

// ------------------------------------------------------------------------------------------------------------
// fp16 weights: one column per `split` warps; each lane streams 16-byte vectors (8 halves) k = part * 32 + lane +
// i * 32 * split of its NR weight rows, U of each row loaded before any is used (what hides the memory latency at
// M = 1). Without a norm x (a few KB, L1/L2-resident) is read per vector from global memory; with one it is staged
// (stage_x), after the first step's weight loads are out, so the staging's latency hides under theirs.

// Weight vectors per row in flight per lane, and warps per column (f16_split), at the shapes measured on an H200 at one
// row (benchmarks/fused_gemv_probe.py, results/fused_gemv_h200.json: every split x loads-in-flight on LLaMA-1.1B's four
// projections): a plain projection is fastest with 2 loads in flight and 2 warps per column (K = 2048; 4 warps at K = 5632),
// the gated one with 4 loads of each row and one warp. Rows 2..4 (unmeasured) keep 2-4 loads and cover a row per step.
template <int ROWS, int NR>
__host__ __device__ constexpr int f16_u() {
  return ROWS == 1 ? (NR == 1 ? 2 : 4) : (NR == 1 ? 4 : 2);
}

__device__ __forceinline__ void load8(uint4 xv, float (&xf)[8]) {
  const half2* xh = reinterpret_cast<const half2*>(&xv);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __half22float2(xh[i]);
    xf[2 * i] = a.x;
    xf[2 * i + 1] = a.y;
  }
}

__device__ __forceinline__ float dot8(const float (&xf)[8], uint4 wv) {
  const half2* wh = reinterpret_cast<const half2*>(&wv);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 w = __half22float2(wh[i]);
    s = fmaf(xf[2 * i], w.x, fmaf(xf[2 * i + 1], w.y, s));
  }
  return s;
}

template <int NR, int U>
__device__ __forceinline__ void f16_load(const uint4* const (&rows)[NR], int k0, int stride, int KV, uint4 (&wv)[NR][U]) {
#pragma unroll
  for (int j = 0; j < U; ++j) {
    const int k = k0 + stride * j;
#pragma unroll
    for (int n = 0; n < NR; ++n) wv[n][j] = k < KV ? __ldcs(rows[n] + k) : make_uint4(0, 0, 0, 0);
  }
}

template <int ROWS, int NR, bool NORM, int U>
__global__ void __launch_bounds__(32 * WARPS) gemv_f16_kernel(const Io io, const half* __restrict__ w) {
  extern __shared__ float4 xs4[];  // with NORM: stage_x's [ROWS][K / 32][XPAD]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col = blockIdx.x * (WARPS / io.split) + warp / io.split, part = warp % io.split;
  const bool live = col < io.N;
  const int KV = io.K / 8, KB = io.K / XBLOCK, stride = 32 * io.split, k_first = live ? part * 32 + lane : KV;
  const uint4* xv = reinterpret_cast<const uint4*>(io.x);
  const uint4* rows[NR];
#pragma unroll
  for (int n = 0; n < NR; ++n) rows[n] = reinterpret_cast<const uint4*>(w + (size_t)(live ? n * io.N + col : 0) * io.K);
  uint4 wv[NR][U];
  f16_load<NR, U>(rows, k_first, stride, KV, wv);
  wait_for_previous_grid();
  float rstd[ROWS];
  if (NORM) {
    stage_x<ROWS, true>(io, xs4, rstd);
  } else {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) rstd[r] = 1.f;
  }
  float v[NR * ROWS] = {};
  for (int k0 = k_first; k0 < KV; k0 += stride * U) {
    if (k0 != k_first) f16_load<NR, U>(rows, k0, stride, KV, wv);
#pragma unroll
    for (int j = 0; j < U; ++j) {
      const int k = k0 + stride * j;
      if (k >= KV) break;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        float xf[8];
        if (NORM) {  // values 8k .. 8k + 7: block k / 4, offset 8 (k % 4)
          const float4* p = xs4 + ((r * KB + k / 4) * XPAD + (k % 4) * 8) / 4;
          const float4 a = p[0], c = p[1];
          xf[0] = a.x, xf[1] = a.y, xf[2] = a.z, xf[3] = a.w, xf[4] = c.x, xf[5] = c.y, xf[6] = c.z, xf[7] = c.w;
        } else {
          load8(__ldg(xv + (size_t)r * KV + k), xf);
        }
#pragma unroll
        for (int n = 0; n < NR; ++n) v[n * ROWS + r] += dot8(xf, wv[n][j]);
      }
    }
  }
  let_next_grid_launch();
  if (column_sum<NR * ROWS>(v, io.split, part, lane, live)) store_column<ROWS, NR>(v, rstd, io, col);
}

// Warps per column for rows 2..4: the fewest (1, 2, 4) whose one step of loads covers a row, so that a long row is
// spread over more warps instead of more serial steps.
int cover_split(int64_t units_per_row, int units_per_warp_step) {
  int s = 1;
  while (s < 4 && units_per_row > (int64_t)units_per_warp_step * s) s *= 2;
  return s;
}

// The fp16 kernel's warps per column (f16_u's comment says where the one-row choice comes from); GemvIO.split overrides.
int f16_split(const GemvIO& io, int nr, int u) {
  if (io.split) return io.split;
  if (io.rows == 1) return nr == 2 ? 1 : io.K >= 4096 ? 4 : 2;
  return cover_split(io.K / 8, 32 * u);
}

// Whether this device and driver take programmatic dependent launch (compute capability 9.0+, CUDA 12.3+ driver, from
// which stream capture records it as a programmatic graph edge). Asked once per device.
bool device_overlaps_launches() {
  static std::mutex lock;
  static int known[64];  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  std::lock_guard<std::mutex> g(lock);
  if (!known[dev]) {
    int major = 0, driver = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDriverGetVersion(&driver);
    known[dev] = major >= 9 && driver >= 12030 ? 1 : 2;
  }
  return known[dev] == 1;
}

// A projection kernel's launch: with the programmatic-stream-serialization attribute where the device takes it and
// GemvIO.overlap asks for it (see wait_for_previous_grid), else a plain launch.
template <typename... P, typename... A>
void launch_overlapped(bool overlap, void (*kernel)(P...), int blocks, size_t smem, cudaStream_t s, A... args) {
  if (overlap && device_overlaps_launches()) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(32 * WARPS);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kernel, args...);
    return;
  }
  kernel<<<blocks, 32 * WARPS, smem, s>>>(args...);
}

bool valid_split(int s) { return s == 0 || s == 1 || s == 2 || s == 4 || s == 8; }

template <int ROWS, int NR, bool NORM, int U>
void launch_f16(const GemvIO& io, const void* w, cudaStream_t s) {
  const int split = f16_split(io, NR, U);
  const int cols = WARPS / split;
  launch_overlapped(io.overlap, gemv_f16_kernel<ROWS, NR, NORM, U>, (int)((io.N + cols - 1) / cols),
                    NORM ? staged_bytes(ROWS, io.K) : 0, s, device_io(io, split), static_cast<const half*>(w));
}

// The 16 (rows, gated, norm) instantiations of a kernel family, chosen at run time.
template <template <int, int, bool> class L, typename... A>
std::string dispatch(const GemvIO& io, A... args) {
  const bool norm = io.gamma != nullptr;
  switch (io.rows * 4 + (io.gated ? 2 : 0) + (norm ? 1 : 0)) {
#define ARCHC_CASE(R)                                       \
  case R * 4 + 0: L<R, 1, false>::run(io, args...); break; \
  case R * 4 + 1: L<R, 1, true>::run(io, args...); break;  \
  case R * 4 + 2: L<R, 2, false>::run(io, args...); break; \
  case R * 4 + 3: L<R, 2, true>::run(io, args...); break;
    ARCHC_CASE(1)
    ARCHC_CASE(2)
    ARCHC_CASE(3)
    ARCHC_CASE(4)
#undef ARCHC_CASE
    default: return "rows must be 1.." + std::to_string(kGemvMaxRows);
  }
  return "";
}

// The fp16 kernel's loads in flight: f16_u's unless GemvIO.unroll forces 2, 4 or 8 (at one row only: the probe's knob).
template <int ROWS, int NR, bool NORM>
struct F16 {
  static void run(const GemvIO& io, const void* w, cudaStream_t s) {
    if constexpr (ROWS == 1) {
      switch (io.unroll) {
        case 2: return launch_f16<ROWS, NR, NORM, 2>(io, w, s);
        case 4: return launch_f16<ROWS, NR, NORM, 4>(io, w, s);
        case 8: return launch_f16<ROWS, NR, NORM, 8>(io, w, s);
        default: break;
      }
    }
    launch_f16<ROWS, NR, NORM, f16_u<ROWS, NR>()>(io, w, s);
  }
};

std::string cuda_error(const char* what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(e);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// What both hand kernels need of the rows and x: 1 .. kGemvMaxRows rows, x 16-byte aligned.
bool rows_fit(const GemvIO& io) { return io.rows >= 1 && io.rows <= kGemvMaxRows && aligned16(io.x); }

// What stage_x needs: whole 32-value blocks of x within the default shared memory, gamma (if any) 16-byte aligned.
bool stage_fits(const GemvIO& io) {
  return io.K % XBLOCK == 0 && staged_bytes(io.rows, io.K) <= SMEM_MAX && (!io.gamma || aligned16(io.gamma));
}

// What both launchers refuse before any kernel: the contract's combinations and sizes.
std::string io_error(const GemvIO& io) {
  if (io.gated && io.residual) return "a residual with a gated product";
  if (!valid_split(io.split)) return "split " + std::to_string(io.split) + " (0, 1, 2, 4 or 8)";
  if (io.unroll != 0 && (io.rows != 1 || (io.unroll != 2 && io.unroll != 4 && io.unroll != 8)))
    return "unroll " + std::to_string(io.unroll) + " (0; or 2, 4, 8 at one row)";
  if (io.K > INT32_MAX || io.N > INT32_MAX / 2) return "dimensions past 32-bit indexing";
  return "";
}

}  // namespace

bool gemv_fits(const GemvIO& io, const void* w) {  // x is staged only with a norm
  return rows_fit(io) && io.K % 8 == 0 && io.K <= (int64_t)1 << 30 && aligned16(w) && (!io.gamma || stage_fits(io));
}

std::string launch_gemv(const GemvIO& io, const void* w, void* stream) {
  std::string err = io_error(io);
  if (err.empty()) err = dispatch<F16>(io, w, static_cast<cudaStream_t>(stream));
  return err.empty() ? cuda_error("gemv kernel launch") : "gemv: " + err;
}

// ------------------------------------------------------------------------------------------------------------
// int4 codes as MatMulNBits stores them (exporters/quantize.py), symmetric, block_size 32.
//
// One column per `split` warps reads its NR rows of B (gate row f and up row F + f when gated): one 16-byte load is one
// whole 32-value block (its 32 codes, first in the low nibble), a lane takes blocks part * 32 + lane + i * 32 * split
// with Q4_U blocks of each row in flight. x is staged once per thread block (stage_x: the conversion to fp32 done once,
// not per weight), one staged block per code block. Dequantization without integer-to-float conversions: a code q
// placed in the top mantissa bits of 1.0f reads as 1 + q / 16, so for a block sum x (q - 8) = 16 sum x (1 + q / 16) -
// 24 sum x, one scale multiply per block; fp32 accumulation throughout.

namespace {

constexpr int Q4_BLOCK = XBLOCK;  // values per quantization block: 16 bytes of codes, one uint4 load, one staged block
constexpr int Q4_U = 2;           // blocks of each row per lane per step

// Code t (0..7) of a 32-bit word of a block (values 8w .. 8w + 7, first in the low nibble) as the float 1 + q / 16.
__device__ __forceinline__ float code_f(uint32_t v, int t) {
  const int sh = 19 - 4 * t;  // nibble t to bits 19..22, the top of the mantissa
  const uint32_t m = sh >= 0 ? (v << sh) : (v >> -sh);
  return __uint_as_float((m & 0x00780000u) | 0x3F800000u);
}

// One step's loads of a lane: Q4_U blocks of each of its NR rows (16 bytes each) and their scales.
template <int NR>
__device__ __forceinline__ void q4_load(const uint4* const (&rb)[NR], const half* const (&rs)[NR], int j0, int stride, int KB,
                                        uint4 (&wq)[NR][Q4_U], float (&sc)[NR][Q4_U]) {
#pragma unroll
  for (int i = 0; i < Q4_U; ++i) {
    const int j = j0 + stride * i;
    const bool in = j < KB;
#pragma unroll
    for (int n = 0; n < NR; ++n) {
      wq[n][i] = in ? __ldcs(rb[n] + j) : make_uint4(0, 0, 0, 0);
      sc[n][i] = in ? __half2float(__ldg(rs[n] + j)) : 0.f;
    }
  }
}

// Resident blocks per SM the register budget must allow: at M = 1 the TinyLlama shape's gate|up (F / 8 = 704 blocks)
// then fits 132 SMs in one wave (6 x 132 = 792; at 48 registers only 5 fit: 660, and 44 blocks ran as a second wave).
__host__ __device__ constexpr int q4_min_blocks(int rows) { return rows == 1 ? 6 : 2; }  // rows 2..4: ~110-125 registers, no spills

template <int ROWS, int NR, bool NORM>
__global__ void __launch_bounds__(32 * WARPS, q4_min_blocks(ROWS))
    gemv_q4_kernel(const Io io, const uint4* __restrict__ b, const half* __restrict__ scales) {
  extern __shared__ float4 xs4[];  // stage_x's [ROWS][K / 32][XPAD]
  const int K = io.K, KB = K / Q4_BLOCK;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col = blockIdx.x * (WARPS / io.split) + warp / io.split, part = warp % io.split;
  const bool live = col < io.N;  // a warp past N still stages x and reaches the barriers
  const int stride = 32 * io.split, j_first = part * 32 + lane;
  const uint4* rb[NR];
  const half* rs[NR];
#pragma unroll
  for (int n = 0; n < NR; ++n) {
    const size_t row = live ? (size_t)(n * io.N + col) : 0;
    rb[n] = b + row * KB;
    rs[n] = scales + row * KB;
  }
  // The first step's weight loads go out before x is staged: they do not depend on x, and at M = 1 (K = 2048) they are
  // all of the warp's weight traffic, so the staging's latency hides under theirs.
  uint4 wq[NR][Q4_U];
  float sc[NR][Q4_U];
  if (live) q4_load<NR>(rb, rs, j_first, stride, KB, wq, sc);
  wait_for_previous_grid();
  float rstd[ROWS];
  stage_x<ROWS, NORM>(io, xs4, rstd);
  float acc[NR * ROWS] = {};
  for (int j0 = live ? j_first : KB; j0 < KB; j0 += stride * Q4_U) {
    if (j0 != j_first) q4_load<NR>(rb, rs, j0, stride, KB, wq, sc);
#pragma unroll
    for (int i = 0; i < Q4_U; ++i) {
      const int j = j0 + stride * i;
      if (j >= KB) break;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const float4* xb = xs4 + (size_t)(r * KB + j) * (XPAD / 4);
        float d[NR] = {}, sx = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const float4 a = xb[2 * w], c = xb[2 * w + 1];
          const float xv[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
          for (int n = 0; n < NR; ++n) {
            const uint32_t word = w == 0 ? wq[n][i].x : w == 1 ? wq[n][i].y : w == 2 ? wq[n][i].z : wq[n][i].w;
#pragma unroll
            for (int t = 0; t < 8; ++t) d[n] = fmaf(xv[t], code_f(word, t), d[n]);
          }
#pragma unroll
          for (int t = 0; t < 8; ++t) sx += xv[t];
        }
        // sum x (q - 8) = 16 sum x (1 + q / 16) - 24 sum x
#pragma unroll
        for (int n = 0; n < NR; ++n) acc[n * ROWS + r] = fmaf(sc[n][i], fmaf(16.f, d[n], -24.f * sx), acc[n * ROWS + r]);
      }
    }
  }
  let_next_grid_launch();
  if (column_sum<NR * ROWS>(acc, io.split, part, lane, live)) store_column<ROWS, NR>(acc, rstd, io, col);
}


template <int ROWS, int NR, bool NORM>
struct Q4 {
  static void run(const GemvIO& io, const void* b, const void* scales, cudaStream_t s) {
    const int split = io.split ? io.split : 1;  // measured: one warp per column beat 2 and 4 on every decode shape
    const int cols = WARPS / split;
    launch_overlapped(io.overlap, gemv_q4_kernel<ROWS, NR, NORM>, (int)((io.N + cols - 1) / cols), staged_bytes(ROWS, io.K), s,
                      device_io(io, split), static_cast<const uint4*>(b), static_cast<const half*>(scales));
  }
};

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

// One block per row: the row's sum of squares over the block, then out = x * rstd * gamma, rounded once.
__global__ void rms_norm_kernel(const half* __restrict__ x, const half* __restrict__ gamma, half* __restrict__ out, int K,
                                float eps) {
  __shared__ float part[32];
  const half* xr = x + (size_t)blockIdx.x * K;
  half* o = out + (size_t)blockIdx.x * K;
  float ss = 0.f;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = __half2float(xr[k]);
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) t += part[i];
  const float rstd = rsqrtf(t / K + eps);
  for (int k = threadIdx.x; k < K; k += blockDim.x) o[k] = __float2half(__half2float(xr[k]) * rstd * __half2float(gamma[k]));
}

}  // namespace

bool q4_gemv_fits(const GemvIO& io, const void* b, int64_t block_size) {  // x is always staged
  return rows_fit(io) && block_size == Q4_BLOCK && stage_fits(io) && aligned16(b);
}

std::string launch_gemv_q4(const GemvIO& io, const void* b, const void* scales, void* stream) {
  std::string err = io_error(io);
  if (err.empty()) err = dispatch<Q4>(io, b, scales, static_cast<cudaStream_t>(stream));
  return err.empty() ? cuda_error("gemv_q4 kernel launch") : "gemv_q4: " + err;
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

std::string rms_norm(const void* x, const void* gamma, float eps, void* out, int64_t rows, int64_t K, void* stream) {
  if (rows == 0) return "";
  if (rows > INT32_MAX || K > INT32_MAX) return "rms_norm: dimensions past 32-bit indexing";
  rms_norm_kernel<<<(unsigned)rows, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const half*>(x), static_cast<const half*>(gamma), static_cast<half*>(out), (int)K, eps);
  return cuda_error("rms_norm kernel launch");
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

namespace {

// Row-major c[rows, N] = x[rows, K] @ W[N, K]^T (+ beta c) is column-major c^T[N, rows] = (W viewed as K x N)^T @ x^T,
// queued on `s` with `workspace` as cuBLAS's workspace; c is fp16 or fp32 (ctype), accumulation fp32.
std::string gemm_on(Blas* b, cudaStream_t s, const void* x, const void* w, void* c, cudaDataType ctype, int64_t rows, int64_t K,
                    int64_t N, float beta, void* workspace) {
  if (rows > INT32_MAX || K > INT32_MAX || N > INT32_MAX) return "dimensions past 32-bit indexing";
  const float one = 1.f;
  std::lock_guard<std::mutex> g(b->lock);
  // cublasSetStream resets the workspace to cuBLAS's own pool: the workspace is set after it, every call.
  if (b->set_stream(b->handle, s) != CUBLAS_STATUS_SUCCESS) return "cublasSetStream failed";
  if (b->set_workspace(b->handle, workspace, b->workspace_bytes) != CUBLAS_STATUS_SUCCESS) return "cublasSetWorkspace failed";
  cublasStatus_t st = b->gemm_ex(b->handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)rows, (int)K, &one, w, CUDA_R_16F, (int)K, x,
                                 CUDA_R_16F, (int)K, &beta, c, ctype, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return st == CUBLAS_STATUS_SUCCESS ? "" : "cublasGemmEx failed (status " + std::to_string((int)st) + ")";
}

// y[m, f] = silu(c[m, f]) * c[m, F + f] over the fp16 [rows, 2F] product cuBLAS wrote (fp16, as onnxruntime's two
// MatMuls would have: half the bytes of an fp32 product, which at 16 x 512 tokens cost the prefill 4% of its time).
__global__ void silu_mul_kernel(const half* __restrict__ c, half* __restrict__ y, int64_t rows, int64_t F) {
  const int64_t n = rows * F;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = i / F, f = i - m * F;
    y[i] = __float2half(silu(__half2float(c[m * 2 * F + f])) * __half2float(c[m * 2 * F + F + f]));
  }
}

}  // namespace

std::string gemm(Blas* b, const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t N, const void* residual,
                 void* workspace, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (residual && residual != y) {  // y = residual, then y += x W^T (beta = 1): the Add without a kernel of its own
    // (where onnxruntime gave y the residual's buffer, MayInplace in gated_mlp.cc, the copy is not needed)
    cudaMemcpyAsync(y, residual, sizeof(half) * (size_t)rows * (size_t)N, cudaMemcpyDeviceToDevice, s);
    std::string e = cuda_error("residual copy");
    if (!e.empty()) return e;
  }
  std::string e = gemm_on(b, s, x, w, y, CUDA_R_16F, rows, K, N, residual ? 1.f : 0.f, workspace);
  return e.empty() ? "" : "gemm: " + e;
}

std::string gemm_swiglu(Blas* b, const void* x, const void* w, void* y, int64_t rows, int64_t K, int64_t F, void* c,
                        void* workspace, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  std::string e = gemm_on(b, s, x, w, c, CUDA_R_16F, rows, K, 2 * F, 0.f, workspace);
  if (!e.empty()) return "gemm_swiglu: " + e;
  const int64_t n = rows * F;
  const int threads = 256;
  const int blocks = (int)std::min<int64_t>((n + threads - 1) / threads, 65535);
  silu_mul_kernel<<<blocks, threads, 0, s>>>(static_cast<const half*>(c), static_cast<half*>(y), rows, F);
  return cuda_error("silu_mul kernel launch");
}

}  // namespace archc_ops
