"""Run a compiled model directory in onnxruntime: provider choice, prefill + cached decode, sampling.

    from archc.runner import Session
    s = Session("out/llama", device="auto")            # 'auto' | 'cuda' | 'cpu'
    r = s.generate([[1, 2, 3], [4, 5]], max_new_tokens=16, top_k=50, top_p=0.9, temperature=0.8, seed=0)
    r.ids, r.prefill_ms, r.decode_tokens_per_s
    logits, present = s.forward(input_ids, attention_mask, past=None)   # one step, numpy in and out
    last, _ = s.forward(input_ids, attention_mask, logits_start=-1)     # the head on the last position only

The modules, by what they hold:
    providers   opening an InferenceSession: provider choice, the CUDA library check, the one-line
                errors and the CPU fallback (choose_providers, open_session)
    session     Session: one step on numpy arrays, generate, the prompt and logits-size checks
    steppers    how generate's steps reach onnxruntime: numpy feeds on the CPU; IO binding, the shared
                cache and the fixed (CUDA-graph) decode buffers on CUDA
    sampling    Sampler (temperature, top-k, top-p)
    placement   node_placement: which execution provider ran each node

A test or benchmark that replaces one of the runner's names patches the module that reads it:
archc.runner.providers._session / .choose_providers, archc.runner.session.FULL_LOGITS_LIMIT,
archc.runner.steppers.GENERATE_LOGITS_START. The names
below are copies bound at import: replacing archc.runner.choose_providers would change nothing, so the
patch points that are not public API (FULL_LOGITS_LIMIT, GENERATE_LOGITS_START, _session, _ort) are not re-exported here and a
patch aimed at this package fails with AttributeError instead of passing silently.
"""

from archc.runner.placement import node_placement
from archc.runner.providers import CONCAT_CACHE_SDPA_KERNEL, choose_providers, cuda_library_problem, open_session, used_name
from archc.runner.sampling import Sampler
from archc.runner.session import GenerationResult, Session

__all__ = ["CONCAT_CACHE_SDPA_KERNEL", "GenerationResult", "Sampler", "Session", "choose_providers", "cuda_library_problem",
           "node_placement", "open_session", "used_name"]
