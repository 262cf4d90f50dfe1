// archc's onnxruntime custom-op library: archc.GatedMLP (domain "archc", opset 1).
//
//   GatedMLP(x [..., K] fp16, w [2F, K] fp16) -> y [..., F] fp16,  y = silu(x Wg^T) * (x Wu^T)
//
// w holds the gate rows then the up rows, each in torch's Linear layout [out, in]; products accumulate in fp32 and
// silu(g) * u is taken in fp32 before the one rounding to fp16. This is the SwiGLU of Shazeer 2020 ("GLU Variants
// Improve Transformer", FFN_SwiGLU without the down projection, which stays an ONNX MatMul).
//
//   GatedMLPNBits(x [..., K] fp16, B uint8 [2F, k_blocks, block_size / 2], scales fp16 [2F, k_blocks]) -> y [..., F] fp16
//     attributes K, bits (4), block_size; the same y from the weight as com.microsoft MatMulNBits stores it
//     (exporters/quantize.py): row n, column k (block j = k / block_size) is (q[n, k] - 8) * scales[n, j], q the 4-bit
//     code, two a byte, the first of each pair in the LOW nibble; symmetric (no zero points: MatMulNBits's default 8).
//     A second op rather than extra inputs of GatedMLP: an op's input count and element types are fixed per op in
//     onnxruntime's custom-op API, and MatMulNBits's attributes (K, bits, block_size) belong to the quantized form only.
//
// Built with g++ alone it registers the CPU kernel (the op's semantics, provable without a GPU); built with
// -DARCHC_ORT_OPS_CUDA and linked with gated_mlp_cuda.cu it registers the CUDA kernel too (exporters/ort_ops/build.py).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cmath>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#ifdef ARCHC_ORT_OPS_CUDA
#include "gated_mlp_cuda.h"
#endif

namespace {

constexpr const char* kDomain = "archc";
constexpr const char* kOpName = "GatedMLP";
constexpr const char* kNBitsName = "GatedMLPNBits";

struct Problem {
  int64_t rows = 0, K = 0, F = 0;
  std::vector<int64_t> y_shape;
};

// Shapes of x [..., K] and w [2F, K]; a mismatch is an INVALID_ARGUMENT naming both shapes.
std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// Both ops' problems (Problem, NBitsProblem), p.F set: rows = the product of x's leading dims, y = x's shape with F last.
template <typename P>
void set_rows_and_y(const std::vector<int64_t>& xs, P& p) {
  p.rows = 1;
  for (size_t i = 0; i + 1 < xs.size(); ++i) p.rows *= xs[i];
  p.y_shape = xs;
  p.y_shape.back() = p.F;
}

Problem check_shapes(const Ort::ConstValue& x, const Ort::ConstValue& w) {
  const std::vector<int64_t> xs = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<int64_t> ws = w.GetTensorTypeAndShapeInfo().GetShape();
  if (xs.empty() || ws.size() != 2 || ws[0] % 2 != 0 || ws[1] != xs.back() || ws[1] < 1)
    throw Ort::Exception("archc.GatedMLP: x " + shape_text(xs) + " and w " + shape_text(ws) +
                             " do not fit (want x [..., K], w [2F, K] with K >= 1)",
                         ORT_INVALID_ARGUMENT);
  Problem p;
  p.K = xs.back();
  p.F = ws[0] / 2;
  set_rows_and_y(xs, p);
  return p;
}

// ------------------------------------------------------------------------------------------------------------
// GatedMLPNBits: attributes and shapes

struct NBitsAttrs {
  int64_t K = 0, bits = 0, block_size = 0;
};

// The attributes as MatMulNBits has them; only what the kernels implement is taken (bits 4; an even block_size of
// at least 16, MatMulNBits's own rule, so that a block is whole bytes). Read at kernel creation: a bad model fails
// when the session is made, not at the first run.
NBitsAttrs read_attrs(const OrtKernelInfo* info) {
  Ort::ConstKernelInfo ki(info);
  NBitsAttrs a;
  a.K = ki.GetAttribute<int64_t>("K");
  a.bits = ki.GetAttribute<int64_t>("bits");
  a.block_size = ki.GetAttribute<int64_t>("block_size");
  if (a.bits != 4)
    throw Ort::Exception("archc.GatedMLPNBits: bits " + std::to_string(a.bits) + " (only 4-bit codes)", ORT_INVALID_ARGUMENT);
  if (a.block_size < 16 || (a.block_size & (a.block_size - 1)) != 0)
    throw Ort::Exception("archc.GatedMLPNBits: block_size " + std::to_string(a.block_size) + " (a power of two >= 16, as MatMulNBits)",
                         ORT_INVALID_ARGUMENT);
  if (a.K < 1) throw Ort::Exception("archc.GatedMLPNBits: K " + std::to_string(a.K), ORT_INVALID_ARGUMENT);
  return a;
}

struct NBitsProblem {
  int64_t rows = 0, K = 0, F = 0, k_blocks = 0, blob = 0;
  std::vector<int64_t> y_shape;
};

// x [..., K], B [2F, k_blocks, block_size / 2] (k_blocks = ceil(K / block_size)), scales [2F, k_blocks] (or flat
// [2F * k_blocks], as MatMulNBits also takes it); a mismatch is an INVALID_ARGUMENT naming the shapes.
NBitsProblem check_nbits(const NBitsAttrs& a, const Ort::ConstValue& x, const Ort::ConstValue& b, const Ort::ConstValue& s) {
  const std::vector<int64_t> xs = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<int64_t> bs = b.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<int64_t> ss = s.GetTensorTypeAndShapeInfo().GetShape();
  NBitsProblem p;
  p.K = a.K;
  p.k_blocks = (a.K + a.block_size - 1) / a.block_size;
  p.blob = a.block_size * a.bits / 8;
  int64_t s_count = 1;
  for (int64_t d : ss) s_count *= d;
  const bool ok = !xs.empty() && xs.back() == a.K && bs.size() == 3 && bs[0] % 2 == 0 && bs[1] == p.k_blocks &&
                  bs[2] == p.blob && (ss.size() == 1 || ss.size() == 2) && (ss.size() == 1 || ss[0] == bs[0]) &&
                  s_count == bs[0] * p.k_blocks;
  if (!ok)
    throw Ort::Exception("archc.GatedMLPNBits: x " + shape_text(xs) + ", B " + shape_text(bs) + " and scales " + shape_text(ss) +
                             " do not fit K " + std::to_string(a.K) + ", block_size " + std::to_string(a.block_size) +
                             " (want x [..., K], B [2F, ceil(K / block_size), block_size / 2], scales [2F, ceil(K / block_size)])",
                         ORT_INVALID_ARGUMENT);
  p.F = bs[0] / 2;
  set_rows_and_y(xs, p);
  return p;
}

// Row n of the stacked weight, dequantized to fp32: (q - 8) * scale, codes two a byte, the first in the low nibble.
void dequant_row(const uint8_t* b, const Ort::Float16_t* scales, const NBitsProblem& p, int64_t block_size, int64_t n,
                 float* out) {
  for (int64_t j = 0; j < p.k_blocks; ++j) {
    const float s = scales[n * p.k_blocks + j].ToFloat();
    const uint8_t* blk = b + (n * p.k_blocks + j) * p.blob;
    for (int64_t i = 0; i < block_size; ++i) {
      const int64_t k = j * block_size + i;
      if (k >= p.K) break;  // the last block's padding
      const int q = (i & 1) ? (blk[i / 2] >> 4) : (blk[i / 2] & 0xF);
      out[k] = float(q - 8) * s;
    }
  }
}

template <typename Fn>
OrtStatusPtr as_status(Fn&& fn) {
  try {
    fn();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (std::string("archc.GatedMLP: ") + e.what()).c_str());
  }
}

// ------------------------------------------------------------------------------------------------------------
// CPU: the reference semantics (tests compare it with numpy), not a fast path.

// Both CPU kernels' loop: y[m, f] = silu(x_m . g) * (x_m . u) in fp32, one rounding to fp16, where gate_up_rows(f, g, u)
// writes gate row f and up row f as fp32 [K] (GatedMLP: its fp16 weights converted; GatedMLPNBits: dequantized).
template <typename Rows>
void cpu_swiglu(const Ort::Float16_t* xp, int64_t rows, int64_t K, int64_t F, Ort::Float16_t* yp, Rows&& gate_up_rows) {
  std::vector<float> xf(rows * K), g(K), u(K);
  for (int64_t i = 0; i < rows * K; ++i) xf[i] = xp[i].ToFloat();
  for (int64_t f = 0; f < F; ++f) {
    gate_up_rows(f, g.data(), u.data());
    for (int64_t m = 0; m < rows; ++m) {
      const float* xr = xf.data() + m * K;
      float gs = 0.f, us = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        gs += xr[k] * g[k];
        us += xr[k] * u[k];
      }
      yp[m * F + f] = Ort::Float16_t(gs / (1.f + std::exp(-gs)) * us);
    }
  }
}

struct CpuKernel {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return as_status([&] {
      Ort::KernelContext ctx(context);
      Ort::ConstValue x = ctx.GetInput(0), w = ctx.GetInput(1);
      const Problem p = check_shapes(x, w);
      Ort::UnownedValue y = ctx.GetOutput(0, p.y_shape);
      const auto* wp = w.GetTensorData<Ort::Float16_t>();
      const int64_t K = p.K, F = p.F;
      cpu_swiglu(x.GetTensorData<Ort::Float16_t>(), p.rows, K, F, y.GetTensorMutableData<Ort::Float16_t>(),
                 [&](int64_t f, float* g, float* u) {
                   for (int64_t k = 0; k < K; ++k) {
                     g[k] = wp[f * K + k].ToFloat();
                     u[k] = wp[(F + f) * K + k].ToFloat();
                   }
                 });
    });
  }
};

// GatedMLPNBits on the CPU: each weight row dequantized to fp32, then as GatedMLP's CPU kernel.
struct CpuNBitsKernel {
  NBitsAttrs a;
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return as_status([&] {
      Ort::KernelContext ctx(context);
      Ort::ConstValue x = ctx.GetInput(0), b = ctx.GetInput(1), s = ctx.GetInput(2);
      const NBitsProblem p = check_nbits(a, x, b, s);
      Ort::UnownedValue y = ctx.GetOutput(0, p.y_shape);
      const auto* bp = b.GetTensorData<uint8_t>();
      const auto* sp = s.GetTensorData<Ort::Float16_t>();
      const int64_t F = p.F;
      cpu_swiglu(x.GetTensorData<Ort::Float16_t>(), p.rows, p.K, F, y.GetTensorMutableData<Ort::Float16_t>(),
                 [&](int64_t f, float* g, float* u) {
                   dequant_row(bp, sp, p, a.block_size, f, g);
                   dequant_row(bp, sp, p, a.block_size, F + f, u);
                 });
    });
  }
};

template <typename Op, typename Kernel>
struct GatedMlpOpBase : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};

struct CpuOp : GatedMlpOpBase<CpuOp, CpuKernel> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo*, void** kernel) const {
    *kernel = new CpuKernel;
    return nullptr;
  }
};

// GatedMLPNBits's schema: x fp16, B uint8, scales fp16 -> y fp16.
template <typename Op, typename Kernel>
struct NBitsOpBase : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  const char* GetName() const { return kNBitsName; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};

struct CpuNBitsOp : NBitsOpBase<CpuNBitsOp, CpuNBitsKernel> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return as_status([&] {
      auto* k = new CpuNBitsKernel;
      try {
        k->a = read_attrs(info);
      } catch (...) {
        delete k;
        throw;
      }
      *kernel = k;
    });
  }
};

#ifdef ARCHC_ORT_OPS_CUDA
// ------------------------------------------------------------------------------------------------------------
// CUDA: everything on onnxruntime's compute stream; nothing allocates with cudaMalloc or waits on the GPU during
// Compute (onnxruntime may be capturing a CUDA graph). Scratch comes from onnxruntime's allocator for the stream.

// Scratch of `bytes` from onnxruntime's allocator for the kernel's stream, given to `use` (which queues work on it and
// returns an error text, empty when fine), then freed at once: the allocator hands it out again only in stream order,
// so freeing as soon as the work is queued is safe.
template <typename Use>
std::string with_scratch(OrtKernelContext* context, Ort::KernelContext& ctx, const Ort::ConstValue& x, size_t bytes, Use&& use) {
  Ort::ConstMemoryInfo info = x.GetTensorMemoryInfo();
  const OrtApi& api = Ort::GetApi();
  void* scratch = nullptr;
  Ort::ThrowOnError(api.KernelContext_GetScratchBuffer(context, info, bytes, &scratch));
  OrtAllocator* alloc = ctx.GetAllocator(*info);
  std::string err = use(static_cast<char*>(scratch));
  alloc->Free(alloc, scratch);
  api.ReleaseAllocator(alloc);
  return err;
}

struct CudaKernel {
  archc_ops::Blas* blas = nullptr;
  ~CudaKernel() { archc_ops::blas_close(blas); }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return as_status([&] {
      Ort::KernelContext ctx(context);
      Ort::ConstValue x = ctx.GetInput(0), w = ctx.GetInput(1);
      const Problem p = check_shapes(x, w);
      Ort::UnownedValue y = ctx.GetOutput(0, p.y_shape);
      if (p.rows == 0 || p.F == 0) return;
      if (p.rows > INT32_MAX / 2 || 2 * p.F > INT32_MAX || p.K > INT32_MAX)
        throw Ort::Exception("archc.GatedMLP: dimensions past 32-bit indexing", ORT_INVALID_ARGUMENT);
      const void* xp = x.GetTensorRawData();
      const void* wp = w.GetTensorRawData();
      void* yp = y.GetTensorMutableRawData();
      void* stream = ctx.GetGPUComputeStream();
      std::string err;
      if (archc_ops::gemv_fits(xp, wp, p.rows, p.K)) {
        err = archc_ops::launch_gemv_swiglu(xp, wp, yp, p.rows, p.K, p.F, stream);
      } else {
        // scratch: cuBLAS's workspace, then the fp32 [rows, 2F] product (256-byte aligned after the workspace)
        const size_t ws = archc_ops::blas_workspace_bytes(blas);
        const size_t bytes = ws + sizeof(float) * (size_t)p.rows * 2 * (size_t)p.F;
        err = with_scratch(context, ctx, x, bytes, [&](char* scratch) {
          return archc_ops::gemm_swiglu(blas, xp, wp, yp, p.rows, p.K, p.F, scratch + ws, scratch, stream);
        });
      }
      if (!err.empty()) throw Ort::Exception("archc.GatedMLP: " + err, ORT_EP_FAIL);
    });
  }
};

struct CudaOp : GatedMlpOpBase<CudaOp, CudaKernel> {
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo*, void** kernel) const {
    std::string err;
    archc_ops::Blas* blas = archc_ops::blas_open(&err);
    if (!blas) return api.CreateStatus(ORT_EP_FAIL, ("archc.GatedMLP: " + err).c_str());
    auto* k = new CudaKernel;
    k->blas = blas;
    *kernel = k;
    return nullptr;
  }
};
// GatedMLPNBits on CUDA: the int4 warp-per-row-pair kernel where it fits (q4_gemv_fits: M <= 4, block_size 32, whole
// blocks, x staged in shared memory); beyond, the weight is dequantized into fp16 scratch and GatedMLP's cuBLAS +
// silu*mul path runs on it (prefill: the GEMM's cost dwarfs the dequantization's).
struct CudaNBitsKernel {
  NBitsAttrs a;
  archc_ops::Blas* blas = nullptr;
  ~CudaNBitsKernel() { archc_ops::blas_close(blas); }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return as_status([&] {
      Ort::KernelContext ctx(context);
      Ort::ConstValue x = ctx.GetInput(0), b = ctx.GetInput(1), s = ctx.GetInput(2);
      const NBitsProblem p = check_nbits(a, x, b, s);
      Ort::UnownedValue y = ctx.GetOutput(0, p.y_shape);
      if (p.rows == 0 || p.F == 0) return;
      if (p.rows > INT32_MAX / 2 || 2 * p.F > INT32_MAX || p.K > INT32_MAX || 2 * p.F * p.k_blocks * p.blob > INT32_MAX)
        throw Ort::Exception("archc.GatedMLPNBits: dimensions past 32-bit indexing", ORT_INVALID_ARGUMENT);
      const void* xp = x.GetTensorRawData();
      const void* bp = b.GetTensorRawData();
      const void* sp = s.GetTensorRawData();
      void* yp = y.GetTensorMutableRawData();
      void* stream = ctx.GetGPUComputeStream();
      std::string err;
      if (archc_ops::q4_gemv_fits(xp, bp, p.rows, p.K, a.block_size)) {
        err = archc_ops::launch_gemv_swiglu_q4(xp, bp, sp, yp, p.rows, p.K, p.F, stream);
      } else {
        // scratch: cuBLAS's workspace, the fp32 [rows, 2F] product, the dequantized fp16 [2F, K] weight (each 256-byte aligned)
        auto up = [](size_t v) { return (v + 255) / 256 * 256; };
        const size_t ws = up(archc_ops::blas_workspace_bytes(blas));
        const size_t c_bytes = up(sizeof(float) * (size_t)p.rows * 2 * (size_t)p.F);
        const size_t w_bytes = 2 * (size_t)p.F * (size_t)p.K * 2;
        err = with_scratch(context, ctx, x, ws + c_bytes + w_bytes, [&](char* base) {
          void* w = base + ws + c_bytes;
          std::string e = archc_ops::dequant_q4(bp, sp, w, 2 * p.F, p.K, p.k_blocks, a.block_size, stream);
          return e.empty() ? archc_ops::gemm_swiglu(blas, xp, w, yp, p.rows, p.K, p.F, base + ws, base, stream) : e;
        });
      }
      if (!err.empty()) throw Ort::Exception("archc.GatedMLPNBits: " + err, ORT_EP_FAIL);
    });
  }
};

struct CudaNBitsOp : NBitsOpBase<CudaNBitsOp, CudaNBitsKernel> {
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    NBitsAttrs attrs;
    if (OrtStatusPtr st = as_status([&] { attrs = read_attrs(info); })) return st;
    std::string err;
    archc_ops::Blas* blas = archc_ops::blas_open(&err);
    if (!blas) return api.CreateStatus(ORT_EP_FAIL, ("archc.GatedMLPNBits: " + err).c_str());
    auto* k = new CudaNBitsKernel;
    k->a = attrs;
    k->blas = blas;
    *kernel = k;
    return nullptr;
  }
};
#endif

// The ops live as long as the process: onnxruntime keeps pointers to them in every session that registered them.
CpuOp cpu_op;
CpuNBitsOp cpu_nbits_op;
#ifdef ARCHC_ORT_OPS_CUDA
CudaOp cuda_op;
CudaNBitsOp cuda_nbits_op;
#endif

}  // namespace

extern "C" {

// What the library is, for archc's Python side (exporters/ort_ops/build.py info) to check a prebuilt file before
// copying it into a model: which kernels it holds, and the op-set version of its ops.
__attribute__((visibility("default"))) const char* archc_ort_ops_info() {
#ifdef ARCHC_ORT_OPS_CUDA
  return "name=archc-ort-ops;version=1;ops=GatedMLP,GatedMLPNBits;kernels=cpu,cuda";
#else
  return "name=archc-ort-ops;version=1;ops=GatedMLP,GatedMLPNBits;kernels=cpu";
#endif
}

// What SessionOptions.register_custom_ops_library calls. Each session gets its own domain object (onnxruntime
// refers to it until the session ends; one that registers this library again gets another).
__attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api)  // an onnxruntime older than these headers: report it through the API every version has
    return base->GetApi(1)->CreateStatus(ORT_FAIL, ("archc ops: this onnxruntime lacks C API version " + std::to_string(ORT_API_VERSION)).c_str());
  Ort::InitApi(api);
  return as_status([&] {
    static std::mutex lock;
    static std::vector<Ort::CustomOpDomain> domains;  // kept alive for the sessions that use them
    std::lock_guard<std::mutex> g(lock);
    Ort::CustomOpDomain domain(kDomain);
    domain.Add(&cpu_op);
    domain.Add(&cpu_nbits_op);
#ifdef ARCHC_ORT_OPS_CUDA
    domain.Add(&cuda_op);
    domain.Add(&cuda_nbits_op);
#endif
    Ort::UnownedSessionOptions(options).Add(domain);
    domains.push_back(std::move(domain));
  });
}

}  // extern "C"
