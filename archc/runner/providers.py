"""Opening a compiled model in onnxruntime: which execution providers to ask for, why the CUDA provider
would not load (one line, before onnxruntime logs pages of it), the CUDA provider options per model
(sdpa_kernel for concatenated-cache models, enable_cuda_graph for shared-cache ones), and the fallback to
the CPU under --device auto. Every failure is one UserError line naming the file or option and the fix.

onnxruntime is imported inside functions (_ort), so importing archc.runner does not load it: light
commands stay light (tests/graph/test_import_layers.py).
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

from archc.dtypes import DType
from archc.errors import UserError
from archc.files import kind_of, stat_path
from archc.model_dir import META_DTYPE, META_KV_CACHE, META_ORT_OPS, MODEL_FILE

ORT_DEFAULT_LOG_SEVERITY = 2  # onnxruntime's own default for its process-wide logger (warning)
# CUDA provider's sdpa_kernel for models whose attention is MultiHeadAttention / ONNX Attention (concatenated
# cache): flash (1) | memory-efficient (2) | unfused (16), without cuDNN flash attention (8), which plans
# its kernel for every new sequence length: BLOOM-1.3B's first 128-token generate took 12.5 s with it and
# 0.88 s without, and steady decode 3.59 -> 3.34 ms/token (H200, benchmarks/RESULTS.md, optimisation log).
CONCAT_CACHE_SDPA_KERNEL = 1 | 2 | 16


def _ort():
    import onnxruntime as ort

    return ort


def choose_providers(device: str) -> tuple[list, str | None]:
    """(providers, note): CUDA only when asked for or when 'auto' and the CUDA EP is compiled in."""
    ort = _ort()
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"--device {device}: choose auto, cuda or cpu")
    if device == "cpu":
        return ["CPUExecutionProvider"], None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = "this onnxruntime build has no CUDAExecutionProvider"
        if device == "cuda":
            raise UserError(f"--device cuda: {reason}; install onnxruntime-gpu or use --device cpu")
        return ["CPUExecutionProvider"], f"cuda unavailable ({reason}); running on CPU"
    reason = cuda_library_problem()
    if reason:
        if device == "cuda":
            raise UserError(f"--device cuda: the CUDA execution provider cannot load ({reason}); use --device cpu")
        return ["CPUExecutionProvider"], f"cuda unavailable ({reason}); running on CPU"
    return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], None


def cuda_library_problem() -> str | None:
    """Why onnxruntime's CUDA provider library would fail to load (None: it loads). Loading it with
    ctypes first gives the reason in one line instead of onnxruntime's logged error pages."""
    import ctypes
    import os

    capi = Path(_ort().__file__).parent / "capi"
    lib = capi / "libonnxruntime_providers_cuda.so"
    if os.name != "posix" or not lib.exists():
        return None  # let onnxruntime decide (Windows DLLs, unusual layouts)
    try:
        shared = capi / "libonnxruntime_providers_shared.so"
        if shared.exists():
            ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(lib))
    except OSError as e:
        return str(e).strip()[:200]
    return None


def ort_ops_library(path: Path, meta: dict) -> Path | None:
    """The custom-op library a model needs (`archc compile --kernels archc`: metadata archc.ort_ops names a file in
    the model folder), checked to load into this onnxruntime; None for models of onnxruntime's operators only."""
    name = meta.get(META_ORT_OPS)
    if name is None:
        return None
    fix = "re-run `archc compile ... --target cuda --kernels archc` (or compile with --kernels onnxruntime)"
    if not name or name in (".", "..") or Path(name).name != name:  # '..' is its own Path.name: the folder's parent
        raise UserError(f"{path}: metadata {META_ORT_OPS} is {name!r}, not a file name in the model folder; {fix}")
    lib = path.parent / name
    st = stat_path(lib, str(lib))
    if st is None or not stat.S_ISREG(st.st_mode):
        raise UserError(f"{lib}: missing (the model's archc ops need this library, metadata {META_ORT_OPS}); {fix}")
    try:
        _ort().SessionOptions().register_custom_ops_library(str(lib))
    except Exception as e:  # noqa: BLE001 - onnxruntime's reason, in one line
        raise UserError(f"{lib}: onnxruntime cannot load it ({' '.join(str(e).split())[:200]}); {fix}") from None
    return lib


def _session(path: Path, providers: list, quiet: bool = True, profile_prefix: str | None = None, ort_ops: Path | None = None):
    ort = _ort()
    so = ort.SessionOptions()
    if ort_ops is not None:
        so.register_custom_ops_library(str(ort_ops))
    so.log_severity_level = 3 if quiet else 2
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # provider-load failures log at error level on the process-wide logger; onnxruntime has no getter
    # for its level, so it goes back to onnxruntime's own default (warning) rather than staying silenced
    ort.set_default_logger_severity(4 if quiet else ORT_DEFAULT_LOG_SEVERITY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ort.InferenceSession(str(path), so, providers=providers)
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)



def open_session(model_dir: str | Path, device: str = "auto", cuda_graph: bool = True, cuda_options: dict | None = None):
    """(InferenceSession, device actually used, note or None). Bad model files -> UserError.
    cuda_graph: for shared-cache (all-GroupQueryAttention) models on CUDA, make the session with the
    provider's enable_cuda_graph (decode steps are captured and replayed); if onnxruntime refuses it,
    the session is made without. cuda_options: extra CUDA provider options (benchmarks' A/B runs)."""
    d = Path(model_dir)
    path = d / MODEL_FILE if d.is_dir() else d
    if not d.is_dir() and d.suffix.lower() in (".yaml", ".yml"):
        raise UserError(f"{model_dir}: this is a spec, not a compiled model; compile it first: "
                        f"`archc compile {model_dir} -o DIR`, then `archc run DIR`")
    if stat_path(path, str(path)) is None:
        raise UserError(f"{model_dir}: no {MODEL_FILE} here; make one with `archc compile SPEC -o {model_dir}`")
    for f in (path, path.parent / (path.name + ".data")):  # a FIFO would make onnx or onnxruntime wait forever
        st = stat_path(f, str(f))
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise UserError(f"{f}: is {kind_of(st.st_mode)}, not a model file; re-run `archc compile`")
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}); re-run `archc compile`") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    del proto
    ort_ops = ort_ops_library(path, meta)
    # passed only where the model has archc's ops: benchmarks replace _session with (path, providers, quiet) functions
    ops_kw = {} if ort_ops is None else {"ort_ops": ort_ops}
    providers, note = choose_providers(device)
    if providers[0] != "CPUExecutionProvider":
        opts = dict(providers[0][1])
        if meta.get(META_KV_CACHE, "concat") != "shared":
            opts["sdpa_kernel"] = str(CONCAT_CACHE_SDPA_KERNEL)
        opts.update({k: str(v) for k, v in (cuda_options or {}).items()})
        providers = [("CUDAExecutionProvider", opts)] + providers[1:]
    if meta.get(META_DTYPE) == DType.bfloat16.short and providers[0] == "CPUExecutionProvider":
        # the note says "...; running on CPU", which is not what happens here: nothing runs
        why = f", and CUDA is not usable here: {note.removesuffix('; running on CPU')}" if note else " (--device cpu)"
        raise UserError(f"{path}: a bf16 model runs on CUDA only (onnxruntime's CPU kernels lack bfloat16){why}; "
                        "compile with --dtype fp32 or fp16 to run it on the CPU")
    sess = None
    if cuda_graph and meta.get(META_KV_CACHE) == "shared" and providers[0] != "CPUExecutionProvider":
        try:
            sess = _session(path, [("CUDAExecutionProvider", {**providers[0][1], "enable_cuda_graph": "1"})] + providers[1:],
                            **ops_kw)
        except Exception:  # noqa: BLE001 - fall back to the plain session below, which reports real errors
            sess = None
    try:
        sess = sess or _session(path, providers, **ops_kw)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0][:200]
        if providers[0] != "CPUExecutionProvider" and device == "auto":
            note = f"cuda unavailable ({msg}); running on CPU"
            try:
                sess = _session(path, ["CPUExecutionProvider"], **ops_kw)
            except Exception as e2:  # noqa: BLE001
                raise UserError(f"{path}: onnxruntime cannot load the model ({str(e2).splitlines()[0][:200]})") from None
        elif "CUDA" in msg and device == "cuda":
            raise UserError(f"--device cuda: {msg}") from None
        elif "NOT_IMPLEMENTED" in msg:
            raise UserError(f"{path}: onnxruntime on {used_name(providers)} has no kernel for a node ({msg})") from None
        else:
            raise UserError(f"{path}: onnxruntime cannot load the model ({msg}); the file may be truncated, re-run `archc compile`") from None
    used = "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    if providers[0] != "CPUExecutionProvider" and used == "cpu":
        if device == "cuda":
            raise UserError("--device cuda: onnxruntime could not start the CUDA execution provider "
                            "(CUDA/cuDNN libraries missing?); use --device cpu")
        note = note or "cuda unavailable (the CUDA execution provider failed to start); running on CPU"
    return sess, used, note


def used_name(providers: list) -> str:
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    return "CUDA" if first.startswith("CUDA") else "CPU"
