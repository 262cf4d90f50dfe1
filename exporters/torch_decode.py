"""Fast greedy decoding of the emitted module: the whole decode step on the device (issue 11).

`Decoder(model, batch, max_len)` owns a static KV cache (GraphModel.static_cache) and the decode state
as device tensors: the attention mask over the cache buffer, the current token, the slot it is written
to, the generated ids. One decode step is forward (one token per row) + argmax + the state's update, all
tensor operations with no read on the host. Hence, as in gpt-fast (pytorch-labs/gpt-fast):
- `compile=True`: the step runs under torch.compile(fullgraph=True), traced once for every step (the
  slot is a tensor, so no step is a new shape). With inductor on CUDA it also sets
  `coordinate_descent_tuning`, which makes inductor write the M = 1 matrix products as Triton
  reductions tuned for bandwidth (cuBLAS runs the narrow ones at 34-53% of it: RESULTS.md), fused with
  the elementwise work around them.
- `graph_steps=k` on CUDA: k consecutive steps are captured as ONE CUDA graph (torch.cuda.CUDAGraph)
  and replayed, so the host's Python, Dynamo's guards and the launches are paid once per k tokens.
  torch.compile's mode="reduce-overhead" would pay them once per token. The capture happens on the
  first generate (after warm-up steps, whose effects are undone), and is reused by every later call.
- `pack=True`: GraphModel.pack_projections (q|k|v and gate|up as one product each). It changes the
  model in place (inference only; see there).
With `eos_token_id`, generation stops after the k-step chunk in which every row has produced it (one
read on the host per chunk); rows are not cut: a caller cuts each row at its first eos.

Prompts are left-padded [B, P] with attention_mask (1 real, 0 padding), as static_greedy and
greedy_generate take them; the feeds are theirs (a prefix-mask model's prompt is its bidirectional
prefix; GLM 2D positions: prompt tokens (position, 0), the k-th generated token (last prompt position,
k)), so the three give the same tokens (tests/emit_torch/test_decoder.py). The prefill runs eagerly
and applies the head to the last position only.
"""

from __future__ import annotations

import math

import torch

from exporters.torch_module import GraphModel


class Decoder:
    """Greedy decoding with the step on the device; see the module docstring.

    batch: rows per generate call (fixed: the cache and the CUDA graph are made for it);
    max_len: the most prompt + new tokens of any call; graph_steps: decode steps per CUDA-graph replay
    (CUDA only; 0 = no graph); compile / backend: torch.compile the step with this backend."""

    def __init__(self, model: GraphModel, batch: int, max_len: int, *, compile: bool = False,
                 backend: str = "inductor", graph_steps: int = 16, pack: bool = True):
        if batch < 1 or max_len < 2:
            raise ValueError(f"Decoder: batch ({batch}) must be >= 1 and max_len ({max_len}) >= 2")
        if graph_steps < 0:
            raise ValueError(f"Decoder: graph_steps ({graph_steps}) must be >= 0 (0: no CUDA graph)")
        self.model = model
        if pack:
            model.pack_projections()
        ref = model.get_submodule("embed").weight
        self.device = ref.device
        self.cuda = self.device.type == "cuda"
        self.graph_steps = graph_steps if self.cuda else 0
        self.batch, self.max_len = batch, max_len
        # a chunk of k steps may run past the last wanted token: room for that overshoot
        self.capacity = max_len + max(self.graph_steps - 1, 0)
        self.cache = model.static_cache(batch, self.capacity)
        zeros = dict(dtype=torch.long, device=self.device)
        self.mask = torch.zeros(batch, self.capacity, **zeros)  # 1 where the slot holds a real token
        self.ids = torch.zeros(batch, self.capacity + 1, **zeros)  # the token at each slot; generated ones after the prompt
        self.tok = torch.zeros(batch, 1, **zeros)  # the token fed to the next step
        self.slot = torch.zeros(1, **zeros)  # the slot that token goes to
        self.count = torch.zeros(1, **zeros)  # how many tokens generated before it (GLM's block position)
        self.lens = torch.zeros(batch, **zeros)  # real prompt tokens per row
        self.prefix = "prefix_len" in model.input_names
        self.glm2d = model.glm2d
        step = self._step
        if compile:
            options = {"coordinate_descent_tuning": True} if backend == "inductor" and self.cuda else None
            step = torch.compile(self._step, fullgraph=True, backend=backend, options=options)
        self._run_step = step
        self._graph: torch.cuda.CUDAGraph | None = None

    def _step(self) -> None:
        """One greedy step, in place: feed `tok` at `slot`, write the argmax to ids[slot + 1] and `tok`."""
        B = self.batch
        self.mask.index_fill_(1, self.slot, 1)
        kw = {}
        if self.prefix:
            kw["prefix_len"] = self.lens
        if self.glm2d:
            kw["position_ids"] = torch.stack(((self.lens - 1)[:, None], self.count.view(1, 1).expand(B, 1)), 1)
        hidden = self.model(self.tok, self.mask, cache=self.cache, cache_position=self.slot, return_hidden=True, **kw)
        nxt = self.model.head_logits(hidden)[:, -1].argmax(-1, keepdim=True)
        self.tok.copy_(nxt)
        self.ids.index_copy_(1, self.slot + 1, nxt)
        self.slot.add_(1)
        self.count.add_(1)

    def _state(self) -> list[torch.Tensor]:
        return [self.mask, self.ids, self.tok, self.slot, self.count]

    def _capture(self) -> None:
        """Warm up (compile, tune, lazy CUDA init) on a side stream, undo the warm-up's state changes,
        then capture graph_steps steps as one CUDA graph. The warm-up's cache writes need no undoing:
        they sit in slots the restored mask hides, and each is rewritten before a real step reads it."""
        saved = [t.clone() for t in self._state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._run_step()
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(self.graph_steps):
                self._run_step()
        self._graph = graph

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, n_new: int = 1,
                 eos_token_id: int | None = None) -> torch.Tensor:
        """Greedy ids [batch, n] after left-padded prompts [batch, P]; n = n_new, or fewer when every
        row produced eos_token_id (see the module docstring)."""
        B, P = prompt_ids.shape
        if B != self.batch:
            raise ValueError(f"Decoder.generate: prompt_ids has {B} rows; this decoder was made for batch {self.batch}")
        if n_new < 1 or P + n_new > self.max_len:
            raise ValueError(f"Decoder.generate: prompt {P} + n_new {n_new} must be within max_len {self.max_len} (and n_new >= 1)")
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        model = self.model
        self.mask.zero_()
        self.mask[:, :P] = attention_mask
        self.lens.copy_(attention_mask.sum(1))
        kw = {"prefix_len": self.lens} if self.prefix else {}
        hidden = model(prompt_ids, self.mask, cache=self.cache, cache_position=torch.arange(P, device=self.device),
                       return_hidden=True, **kw)
        first = model.head_logits(hidden[:, -1:])[:, -1].argmax(-1, keepdim=True)
        self.tok.copy_(first)
        self.ids[:, P:P + 1] = first
        self.slot.fill_(P)
        self.count.fill_(1)
        done = 1
        chunk = self.graph_steps or 1
        if self.graph_steps and self._graph is None and n_new > 1:
            self._capture()
        for _ in range(math.ceil((n_new - 1) / chunk)):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._run_step()
            done += chunk
            if eos_token_id is not None and bool((self.ids[:, P:P + min(done, n_new)] == eos_token_id).any(1).all()):
                break
        return self.ids[:, P:P + min(done, n_new)].clone()
