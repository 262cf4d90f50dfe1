// archc's onnxruntime custom-op library: four ops of domain "archc", opset 1, all fp16 in and out.
//
//   GatedMLP(x [..., K], w [2F, K], gamma [K]?)                               -> y [..., F]   y = silu(xn Wg^T) * (xn Wu^T)
//   GatedMLPNBits(x [..., K], B, scales, gamma [K]?)   attrs K, bits, block_size -> y [..., F]   the same on int4 codes
//   Linear(x [..., K], w [N, K], residual [..., N]?, gamma [K]?)              -> y [..., N]   y = xn W^T (+ residual)
//   LinearNBits(x [..., K], B, scales, residual?, gamma?) attrs K, bits, block_size -> y [..., N]   the same on int4 codes
//
// (? = optional: a node leaves it out with "" in its inputs, or drops it when nothing follows.) Every op also takes the
// float attribute `epsilon`, required when gamma is given:
//   xn = gamma ? x * 1 / sqrt(mean_K(x^2) + epsilon) * gamma : x   RMSNorm (Zhang & Sennrich 2019), fp32, never rounded
// so the norm in front of a projection runs inside it. Products accumulate in fp32; silu(g) * u (SwiGLU, Shazeer 2020,
// "GLU Variants Improve Transformer", FFN_SwiGLU without the down projection) or p + residual (the residual stream's
// Add) is taken in fp32 before the one rounding to fp16.
//
// Weights are in torch's Linear layout [out, in]; a gated op's holds the gate rows then the up rows. The NBits ops read
// the weight as com.microsoft MatMulNBits stores it (exporters/quantize.py): B uint8 [rows, k_blocks, block_size / 2],
// scales fp16 [rows, k_blocks] (or flat); row n, column k (block j = k / block_size) is (q[n, k] - 8) * scales[n, j],
// q the 4-bit code, two a byte, the first of each pair in the LOW nibble; symmetric (no zero points: MatMulNBits's
// default 8). Separate ops rather than extra inputs: an op's input count and element types are fixed per op in
// onnxruntime's custom-op API, and MatMulNBits's attributes (K, bits, block_size) belong to the quantized form only.
//
// The four ops are one template over two axes: the weight (fp16 or int4 codes) and the tail (SwiGLU or residual Add).
// Built with g++ alone it registers the CPU kernels (the ops' semantics, provable without a GPU); built with
// -DARCHC_ORT_OPS_CUDA and linked with gated_mlp_cuda.cu it registers the CUDA kernels too (exporters/ort_ops/build.py).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cmath>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef ARCHC_ORT_OPS_CUDA
#include "gated_mlp_cuda.h"
#endif

namespace {

constexpr const char* kDomain = "archc";

enum class Weight { fp16, q4 };        // w fp16 [rows, K], or B + scales (int4 codes)
enum class Tail { swiglu, residual };  // silu(gate) * up over a [2F, K] weight, or + an optional residual

// The op's name, and where its inputs sit: x first, then the weight's inputs, then residual (Linear ops), gamma last.
template <Weight W, Tail T>
struct Op {
  static constexpr size_t weight_inputs() {
    switch (W) {
      case Weight::fp16: return 1;
      case Weight::q4: return 2;
    }
    return 0;
  }
  static constexpr size_t residual_input() {  // Linear ops only
    switch (T) {
      case Tail::residual: return 1 + weight_inputs();
      case Tail::swiglu: break;
    }
    return SIZE_MAX;
  }
  static constexpr size_t gamma_input() {
    switch (T) {
      case Tail::residual: return 2 + weight_inputs();
      case Tail::swiglu: return 1 + weight_inputs();
    }
    return SIZE_MAX;
  }
  static constexpr size_t input_count() { return gamma_input() + 1; }
  static constexpr const char* name() {
    switch (T) {
      case Tail::swiglu: return W == Weight::fp16 ? "GatedMLP" : "GatedMLPNBits";
      case Tail::residual: return W == Weight::fp16 ? "Linear" : "LinearNBits";
    }
    return "";
  }
  static std::string prefix() { return std::string("archc.") + name() + ": "; }
  static constexpr const char* rows_word() {  // the weight's row count, in the shape errors
    switch (T) {
      case Tail::swiglu: return "2F";
      case Tail::residual: return "N";
    }
    return "";
  }
};

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

std::vector<int64_t> shape_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

// ------------------------------------------------------------------------------------------------------------
// Attributes, read at kernel creation: a bad model fails when the session is made, not at the first run.

struct Attrs {
  int64_t K = 0, bits = 0, block_size = 0;  // the NBits ops' (as MatMulNBits has them)
  bool has_eps = false;                     // epsilon is optional: needed only with gamma, which is known at run time
  float eps = 0.f;
};

template <Weight W, Tail T>
Attrs read_attrs(const OrtKernelInfo* info) {
  using O = Op<W, T>;
  Attrs a;
  // The C call rather than ConstKernelInfo::GetAttribute, which throws for an absent attribute like for any failure.
  if (OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_float(info, "epsilon", &a.eps))
    Ort::GetApi().ReleaseStatus(st);  // absent (or not a float): an error later only if gamma comes
  else
    a.has_eps = true;
  if (a.has_eps && !(std::isfinite(a.eps) && a.eps >= 0.f))
    throw Ort::Exception(O::prefix() + "epsilon " + std::to_string(a.eps) + " (want a finite value >= 0)", ORT_INVALID_ARGUMENT);
  switch (W) {
    case Weight::fp16:
      return a;
    case Weight::q4:
      break;
  }
  // Only what the kernels implement: bits 4; a power-of-two block_size of at least 16 (MatMulNBits's own rule), so
  // that a block is whole bytes.
  Ort::ConstKernelInfo ki(info);
  a.K = ki.GetAttribute<int64_t>("K");
  a.bits = ki.GetAttribute<int64_t>("bits");
  a.block_size = ki.GetAttribute<int64_t>("block_size");
  if (a.bits != 4)
    throw Ort::Exception(O::prefix() + "bits " + std::to_string(a.bits) + " (only 4-bit codes)", ORT_INVALID_ARGUMENT);
  if (a.block_size < 16 || (a.block_size & (a.block_size - 1)) != 0)
    throw Ort::Exception(O::prefix() + "block_size " + std::to_string(a.block_size) + " (a power of two >= 16, as MatMulNBits)",
                         ORT_INVALID_ARGUMENT);
  if (a.K < 1) throw Ort::Exception(O::prefix() + "K " + std::to_string(a.K), ORT_INVALID_ARGUMENT);
  return a;
}

// ------------------------------------------------------------------------------------------------------------
// One call's inputs, checked: a mismatch is an INVALID_ARGUMENT naming the op and the shapes.

struct Problem {
  int64_t rows = 0, K = 0, N = 0;  // N: output columns (F of a gated op)
  int64_t w_rows = 0;              // the weight's rows: 2N gated, else N
  int64_t k_blocks = 0, blob = 0;  // NBits: blocks a row, bytes a block
  std::vector<int64_t> y_shape;
};

struct Call {
  Ort::ConstValue x, w, scales, residual, gamma;  // w: the fp16 weight, or B; scales, residual, gamma may be null
  Problem p;
};

// Input i of the node, or null where the node leaves the optional input out: onnxruntime gives a null OrtValue for a
// "" among the inputs, and fewer inputs (GetInputCount) when the node drops trailing ones.
Ort::ConstValue optional_input(const Ort::KernelContext& ctx, size_t i) {
  return i < ctx.GetInputCount() ? ctx.GetInput(i) : Ort::ConstValue{nullptr};
}

// The N rows of the weight from its row count: gated, gate rows then up rows (an even count).
template <Tail T>
bool out_columns(int64_t w_rows, int64_t* N) {
  switch (T) {
    case Tail::swiglu:
      *N = w_rows / 2;
      return w_rows % 2 == 0;
    case Tail::residual:
      *N = w_rows;
      return true;
  }
  return false;
}

// x [..., K], w [2F or N, K].
template <Weight W, Tail T>
void check_fp16_weight(const std::vector<int64_t>& xs, const Ort::ConstValue& w, Problem& p) {
  using O = Op<W, T>;
  const std::vector<int64_t> ws = shape_of(w);
  const bool ok = !xs.empty() && ws.size() == 2 && ws[1] == xs.back() && ws[1] >= 1 && out_columns<T>(ws[0], &p.N);
  if (!ok)
    throw Ort::Exception(O::prefix() + "x " + shape_text(xs) + " and w " + shape_text(ws) + " do not fit (want x [..., K], w [" +
                             O::rows_word() + ", K] with K >= 1)",
                         ORT_INVALID_ARGUMENT);
  p.K = xs.back();
  p.w_rows = ws[0];
}

// x [..., K], B [rows, k_blocks, block_size / 2] (k_blocks = ceil(K / block_size)), scales [rows, k_blocks] (or flat
// [rows * k_blocks], as MatMulNBits also takes it).
template <Weight W, Tail T>
void check_q4_weight(const Attrs& a, const std::vector<int64_t>& xs, const Ort::ConstValue& b, const Ort::ConstValue& s,
                     Problem& p) {
  using O = Op<W, T>;
  const std::vector<int64_t> bs = shape_of(b), ss = shape_of(s);
  p.K = a.K;
  p.k_blocks = (a.K + a.block_size - 1) / a.block_size;
  p.blob = a.block_size * a.bits / 8;
  int64_t s_count = 1;
  for (int64_t d : ss) s_count *= d;
  const bool ok = !xs.empty() && xs.back() == a.K && bs.size() == 3 && bs[1] == p.k_blocks && bs[2] == p.blob &&
                  (ss.size() == 1 || ss.size() == 2) && (ss.size() == 1 || ss[0] == bs[0]) && s_count == bs[0] * p.k_blocks &&
                  out_columns<T>(bs[0], &p.N);
  if (!ok) {
    const std::string r = O::rows_word();
    throw Ort::Exception(O::prefix() + "x " + shape_text(xs) + ", B " + shape_text(bs) + " and scales " + shape_text(ss) +
                             " do not fit K " + std::to_string(a.K) + ", block_size " + std::to_string(a.block_size) +
                             " (want x [..., K], B [" + r + ", ceil(K / block_size), block_size / 2], scales [" + r +
                             ", ceil(K / block_size)])",
                         ORT_INVALID_ARGUMENT);
  }
  p.w_rows = bs[0];
}

template <Weight W, Tail T>
Call bind(const Ort::KernelContext& ctx, const Attrs& a) {
  using O = Op<W, T>;
  Call c;
  c.x = ctx.GetInput(0);
  c.w = ctx.GetInput(1);
  const std::vector<int64_t> xs = shape_of(c.x);
  switch (W) {
    case Weight::fp16:
      check_fp16_weight<W, T>(xs, c.w, c.p);
      break;
    case Weight::q4:
      c.scales = ctx.GetInput(2);
      check_q4_weight<W, T>(a, xs, c.w, c.scales, c.p);
      break;
  }
  c.p.rows = 1;
  for (size_t i = 0; i + 1 < xs.size(); ++i) c.p.rows *= xs[i];
  c.p.y_shape = xs;
  c.p.y_shape.back() = c.p.N;
  switch (T) {
    case Tail::residual:
      c.residual = optional_input(ctx, O::residual_input());
      if (c.residual && shape_of(c.residual) != c.p.y_shape)
        throw Ort::Exception(O::prefix() + "residual " + shape_text(shape_of(c.residual)) + " is not y's shape " +
                                 shape_text(c.p.y_shape) + " (x " + shape_text(xs) + " with N = " + std::to_string(c.p.N) +
                                 " last; no broadcasting)",
                             ORT_INVALID_ARGUMENT);
      break;
    case Tail::swiglu:
      break;
  }
  c.gamma = optional_input(ctx, O::gamma_input());
  if (c.gamma) {
    if (!a.has_eps)
      throw Ort::Exception(O::prefix() + "gamma given without the float attribute epsilon (the RMSNorm's eps; add epsilon=...)",
                           ORT_INVALID_ARGUMENT);
    const std::vector<int64_t> gs = shape_of(c.gamma);
    if (gs != std::vector<int64_t>{c.p.K})
      throw Ort::Exception(O::prefix() + "gamma " + shape_text(gs) + " does not fit x " + shape_text(xs) + " (want gamma [K], K = " +
                               std::to_string(c.p.K) + ")",
                           ORT_INVALID_ARGUMENT);
  }
  return c;
}

template <typename Fn>
OrtStatusPtr as_status(Fn&& fn) {
  try {
    fn();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (std::string("archc ops: ") + e.what()).c_str());
  }
}

// ------------------------------------------------------------------------------------------------------------
// CPU: the reference semantics (tests compare it with numpy), not a fast path.

// Weight row n dequantized to fp32: (q - 8) * scale, codes two a byte, the first in the low nibble.
void dequant_row(const uint8_t* b, const Ort::Float16_t* scales, const Problem& p, int64_t block_size, int64_t n, float* out) {
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

// Weight row n as fp32 [K]: the fp16 weight converted, or the codes dequantized.
template <Weight W>
void weight_row(const Call& c, const Attrs& a, int64_t n, float* out) {
  switch (W) {
    case Weight::fp16: {
      const auto* wp = c.w.GetTensorData<Ort::Float16_t>() + n * c.p.K;
      for (int64_t k = 0; k < c.p.K; ++k) out[k] = wp[k].ToFloat();
      return;
    }
    case Weight::q4:
      dequant_row(c.w.GetTensorData<uint8_t>(), c.scales.GetTensorData<Ort::Float16_t>(), c.p, a.block_size, n, out);
      return;
  }
}

// xn as fp32 [rows, K]: x, RMS-normalized and scaled by gamma when the call has gamma.
std::vector<float> normed_x(const Call& c, const Attrs& a) {
  const int64_t K = c.p.K;
  const auto* xp = c.x.GetTensorData<Ort::Float16_t>();
  std::vector<float> xn(c.p.rows * K);
  for (int64_t i = 0; i < c.p.rows * K; ++i) xn[i] = xp[i].ToFloat();
  if (!c.gamma) return xn;
  const auto* gp = c.gamma.GetTensorData<Ort::Float16_t>();
  for (int64_t m = 0; m < c.p.rows; ++m) {
    float* r = xn.data() + m * K;
    float ss = 0.f;
    for (int64_t k = 0; k < K; ++k) ss += r[k] * r[k];
    const float inv = 1.f / std::sqrt(ss / float(K) + a.eps);
    for (int64_t k = 0; k < K; ++k) r[k] = r[k] * inv * gp[k].ToFloat();
  }
  return xn;
}

float dot(const float* a, const float* b, int64_t K) {
  float s = 0.f;
  for (int64_t k = 0; k < K; ++k) s += a[k] * b[k];
  return s;
}

// y[m, n] = silu(xn_m . gate_n) * (xn_m . up_n), or xn_m . w_n (+ residual[m, n]); fp32, one rounding to fp16.
template <Weight W, Tail T>
void cpu_reference(const Call& c, const Attrs& a, Ort::Float16_t* y) {
  const Problem& p = c.p;
  const std::vector<float> xn = normed_x(c, a);
  std::vector<float> w0(p.K), w1(p.K);
  const Ort::Float16_t* res = nullptr;
  switch (T) {
    case Tail::residual:
      res = c.residual ? c.residual.GetTensorData<Ort::Float16_t>() : nullptr;
      break;
    case Tail::swiglu:
      break;
  }
  for (int64_t n = 0; n < p.N; ++n) {
    weight_row<W>(c, a, n, w0.data());  // gated: the gate row; else the row
    switch (T) {
      case Tail::swiglu:
        weight_row<W>(c, a, p.N + n, w1.data());  // the up row
        for (int64_t m = 0; m < p.rows; ++m) {
          const float g = dot(xn.data() + m * p.K, w0.data(), p.K), u = dot(xn.data() + m * p.K, w1.data(), p.K);
          y[m * p.N + n] = Ort::Float16_t(g / (1.f + std::exp(-g)) * u);
        }
        break;
      case Tail::residual:
        for (int64_t m = 0; m < p.rows; ++m) {
          const float v = dot(xn.data() + m * p.K, w0.data(), p.K);
          y[m * p.N + n] = Ort::Float16_t(res ? v + res[m * p.N + n].ToFloat() : v);
        }
        break;
    }
  }
}

template <Weight W, Tail T>
struct CpuKernel {
  Attrs a;
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return as_status([&] {
      Ort::KernelContext ctx(context);
      const Call c = bind<W, T>(ctx, a);
      Ort::UnownedValue y = ctx.GetOutput(0, c.p.y_shape);
      cpu_reference<W, T>(c, a, y.GetTensorMutableData<Ort::Float16_t>());
    });
  }
};

// The schema every kernel of op (W, T) shares: x fp16, the weight (fp16 w, or uint8 B + fp16 scales), residual and
// gamma fp16 and optional -> y fp16.
template <typename Self, typename Kernel, Weight W, Tail T>
struct OpSchema : Ort::CustomOpBase<Self, Kernel, /*WithStatus=*/true> {
  using O = Op<W, T>;
  OpSchema() {
    switch (T) {
      case Tail::residual:
        // y may take the residual's buffer: the residual stream is read once, here, so onnxruntime's planner hands y that
        // buffer when nothing reads it later, and the prefill's cuBLAS path adds into it without copying it first (the
        // kernels read each residual element before writing the same element of y).
        this->OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
          *input_index = new int[1]{(int)O::residual_input()};
          *output_index = new int[1]{0};
          return 1;
        };
        this->OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
          delete[] input_index;
          delete[] output_index;
        };
        break;
      case Tail::swiglu:
        break;
    }
  }
  const char* GetName() const { return O::name(); }
  size_t GetInputTypeCount() const { return O::input_count(); }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    switch (W) {
      case Weight::q4:
        if (i == 1) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        break;
      case Weight::fp16:
        break;
    }
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == O::gamma_input() || i == O::residual_input() ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};

template <Weight W, Tail T>
struct CpuOp : OpSchema<CpuOp<W, T>, CpuKernel<W, T>, W, T> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return as_status([&] {
      auto k = std::make_unique<CpuKernel<W, T>>();
      k->a = read_attrs<W, T>(info);
      *kernel = k.release();
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

// Rows up to archc_ops::kGemvMaxRows: one hand kernel does the norm, the projection and the tail (gemv_fits /
// q4_gemv_fits say when). Beyond (prefill), in scratch: the norm into fp16 xn (rms_norm), the codes into an fp16 weight
// (dequant_q4), then cuBLAS (gemm, with the residual; gemm_swiglu) on them: the GEMM's cost dwarfs the extra passes.
template <Weight W, Tail T>
struct CudaKernel {
  using O = Op<W, T>;
  Attrs a;
  archc_ops::Blas* blas = nullptr;
  ~CudaKernel() { archc_ops::blas_close(blas); }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return as_status([&] {
      Ort::KernelContext ctx(context);
      const Call c = bind<W, T>(ctx, a);
      const Problem& p = c.p;
      Ort::UnownedValue y = ctx.GetOutput(0, p.y_shape);
      if (p.rows == 0 || p.N == 0) return;
      if (p.rows > INT32_MAX / 2 || p.w_rows > INT32_MAX || p.K > INT32_MAX || p.rows * p.K > INT32_MAX ||
          p.w_rows * p.k_blocks * p.blob > INT32_MAX)
        throw Ort::Exception(O::prefix() + "dimensions past 32-bit indexing", ORT_INVALID_ARGUMENT);
      archc_ops::GemvIO io;
      io.x = c.x.GetTensorRawData();
      io.gamma = c.gamma ? c.gamma.GetTensorRawData() : nullptr;
      io.eps = a.eps;
      io.residual = c.residual ? c.residual.GetTensorRawData() : nullptr;
      io.y = y.GetTensorMutableRawData();
      io.rows = p.rows;
      io.K = p.K;
      io.N = p.N;
      switch (T) {
        case Tail::swiglu: io.gated = true; break;
        case Tail::residual: io.gated = false; break;
      }
      const void* w = c.w.GetTensorRawData();  // fp16 w, or B
      const void* scales = c.scales ? c.scales.GetTensorRawData() : nullptr;
      void* stream = ctx.GetGPUComputeStream();
      std::string err;
      switch (W) {
        case Weight::fp16:
          err = archc_ops::gemv_fits(io, w) ? archc_ops::launch_gemv(io, w, stream) : beyond_gemv(context, ctx, c, io, w, scales, stream);
          break;
        case Weight::q4:
          err = archc_ops::q4_gemv_fits(io, w, a.block_size) ? archc_ops::launch_gemv_q4(io, w, scales, stream)
                                                              : beyond_gemv(context, ctx, c, io, w, scales, stream);
          break;
      }
      if (!err.empty()) throw Ort::Exception(O::prefix() + err, ORT_EP_FAIL);
    });
  }

  // Scratch, each piece 256-byte aligned: cuBLAS's workspace; the fp16 [rows, 2F] product (gated); the normed fp16
  // [rows, K] x (gamma); the dequantized fp16 [w_rows, K] weight (NBits).
  std::string beyond_gemv(OrtKernelContext* context, Ort::KernelContext& ctx, const Call& c, const archc_ops::GemvIO& io,
                          const void* w, const void* scales, void* stream) {
    const Problem& p = c.p;
    auto up = [](size_t v) { return (v + 255) / 256 * 256; };
    const size_t ws = up(archc_ops::blas_workspace_bytes(blas));
    size_t c_bytes = 0, xn_bytes = io.gamma ? up(2 * (size_t)p.rows * (size_t)p.K) : 0, w_bytes = 0;
    switch (T) {
      case Tail::swiglu: c_bytes = up(2 * (size_t)p.rows * (size_t)p.w_rows); break;  // the fp16 [rows, 2F] product
      case Tail::residual: break;
    }
    switch (W) {
      case Weight::q4: w_bytes = up(2 * (size_t)p.w_rows * (size_t)p.K); break;
      case Weight::fp16: break;
    }
    return with_scratch(context, ctx, c.x, ws + c_bytes + xn_bytes + w_bytes, [&](char* base) -> std::string {
      char* prod = base + ws;
      char* xn = prod + c_bytes;
      char* wq = xn + xn_bytes;
      const void* xin = io.x;
      const void* win = w;
      std::string e;
      if (io.gamma) {
        e = archc_ops::rms_norm(io.x, io.gamma, io.eps, xn, p.rows, p.K, stream);
        xin = xn;
      }
      switch (W) {
        case Weight::q4:
          if (e.empty()) e = archc_ops::dequant_q4(w, scales, wq, p.w_rows, p.K, p.k_blocks, a.block_size, stream);
          win = wq;
          break;
        case Weight::fp16:
          break;
      }
      if (!e.empty()) return e;
      switch (T) {
        case Tail::swiglu: return archc_ops::gemm_swiglu(blas, xin, win, io.y, p.rows, p.K, p.N, prod, base, stream);
        case Tail::residual: return archc_ops::gemm(blas, xin, win, io.y, p.rows, p.K, p.N, io.residual, base, stream);
      }
      return std::string("unknown tail");
    });
  }
};

template <Weight W, Tail T>
struct CudaOp : OpSchema<CudaOp<W, T>, CudaKernel<W, T>, W, T> {
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return as_status([&] {
      auto k = std::make_unique<CudaKernel<W, T>>();
      k->a = read_attrs<W, T>(info);
      std::string err;
      k->blas = archc_ops::blas_open(&err);
      if (!k->blas) throw Ort::Exception(Op<W, T>::prefix() + err, ORT_EP_FAIL);
      *kernel = k.release();
    });
  }
};
#endif

// The ops live as long as the process: onnxruntime keeps pointers to them in every session that registered them.
CpuOp<Weight::fp16, Tail::swiglu> cpu_gated;
CpuOp<Weight::q4, Tail::swiglu> cpu_gated_nbits;
CpuOp<Weight::fp16, Tail::residual> cpu_linear;
CpuOp<Weight::q4, Tail::residual> cpu_linear_nbits;
#ifdef ARCHC_ORT_OPS_CUDA
CudaOp<Weight::fp16, Tail::swiglu> cuda_gated;
CudaOp<Weight::q4, Tail::swiglu> cuda_gated_nbits;
CudaOp<Weight::fp16, Tail::residual> cuda_linear;
CudaOp<Weight::q4, Tail::residual> cuda_linear_nbits;
#endif

}  // namespace

extern "C" {

// What the library is, for archc's Python side (exporters/ort_ops/build.py info) to check a prebuilt file before
// copying it into a model: which kernels it holds, and which ops (version 2: gamma on the gated ops, Linear*).
__attribute__((visibility("default"))) const char* archc_ort_ops_info() {
#ifdef ARCHC_ORT_OPS_CUDA
  return "name=archc-ort-ops;version=2;ops=GatedMLP,GatedMLPNBits,Linear,LinearNBits;kernels=cpu,cuda";
#else
  return "name=archc-ort-ops;version=2;ops=GatedMLP,GatedMLPNBits,Linear,LinearNBits;kernels=cpu";
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
    domain.Add(&cpu_gated);
    domain.Add(&cpu_gated_nbits);
    domain.Add(&cpu_linear);
    domain.Add(&cpu_linear_nbits);
#ifdef ARCHC_ORT_OPS_CUDA
    domain.Add(&cuda_gated);
    domain.Add(&cuda_gated_nbits);
    domain.Add(&cuda_linear);
    domain.Add(&cuda_linear_nbits);
#endif
    Ort::UnownedSessionOptions(options).Add(domain);
    domains.push_back(std::move(domain));
  });
}

}  // extern "C"
