"""The onnxruntime-genai side of `archc bench`'s genai backends, run as its own process
(archc/bench/genai.py starts it with the python that has onnxruntime_genai).

Why a separate process: genai's CPU wheel depends on the CPU `onnxruntime`, whose files replace
onnxruntime-gpu's in one environment, so on the CPU it lives in its own venv (scripts/genai_env.sh);
on a GPU machine it keeps genai's onnxruntime and archc's in separate processes, as each row of
issue 14's table ran. This file imports only the standard library, numpy and onnxruntime_genai.

Protocol: one JSON request per stdin line, one answer per request on stdout as a line starting with
REPLY (genai may print its own lines; they are ignored):
  {"op": "load", "model_dir": D, "device": "cuda"|"cpu", "cuda_graph": bool}  -> {"ok": true, "version": V}
  {"op": "measure", "prompts": [[ids]...], "new_tokens": N, "warmup": W, "prefill_repeats": P,
   "repeats": R}  -> {"prefill_s": [...], "generate_s": [...], "tokens": [[N ids]...]}
  {"op": "quit"}
Any failure answers {"error": "first line of the message"}.

Timing is archc's harness method (archc/bench/harness.py), host clock around whole calls: prefill =
a generate of 1 token (generator made, prompt appended, i.e. the prompt forward, first greedy pick
read back to the host); generate = N tokens. genai's own fastest loop: generate_next_token N times,
the ids read once at the end. Every run makes exactly N tokens, as every backend of the bench (no eos
stop): min_length = max_length. genai has no other way (an empty eos list makes the pad id its eos; ids
outside the vocabulary are refused), and min_length masks the eos logit until then, so genai's greedy
pick differs from archc's only at a step where eos is the argmax (random weights reach any id).
"""

from __future__ import annotations

import json
import sys
import time

REPLY = "@@archc-genai "


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0][:300]}" if msg else type(e).__name__


class Worker:
    def __init__(self):
        import onnxruntime_genai as og

        self.og = og
        self.model = None

    def load(self, req: dict) -> dict:
        og = self.og
        config = og.Config(req["model_dir"])
        config.clear_providers()  # the CPU provider
        if req["device"] == "cuda":
            config.append_provider("cuda")
            if req["cuda_graph"]:
                config.set_provider_option("cuda", "enable_cuda_graph", "1")
        self.model = None
        self.model = og.Model(config)
        return {"ok": True, "version": og.__version__}

    def _generate(self, prompts, n: int) -> list[list[int]]:
        import numpy as np

        og = self.og
        length = len(prompts[0]) + n
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=length, min_length=length, batch_size=len(prompts))
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.asarray(prompts, dtype=np.int32))
        for k in range(n):
            if gen.is_done():
                raise RuntimeError(f"genai stopped after {k} of {n} tokens")
            gen.generate_next_token()
        out = [list(map(int, gen.get_sequence(b)[-n:])) for b in range(len(prompts))]
        del gen
        return out

    def measure(self, req: dict) -> dict:
        prompts, n = req["prompts"], req["new_tokens"]
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("prompts must have equal lengths")
        for _ in range(req["warmup"]):
            self._generate(prompts, 1)
            self._generate(prompts, min(n, 8))
        t1 = []
        for _ in range(req["prefill_repeats"]):
            t = time.perf_counter()
            self._generate(prompts, 1)
            t1.append(time.perf_counter() - t)
        tn, tokens = [], None
        for _ in range(req["repeats"]):
            t = time.perf_counter()
            tokens = self._generate(prompts, n)
            tn.append(time.perf_counter() - t)
        return {"prefill_s": t1, "generate_s": tn, "tokens": tokens}


def main() -> None:
    try:
        worker = Worker()
    except Exception as e:  # noqa: BLE001 - no genai here: the one answer says so
        print(REPLY + json.dumps({"error": _first_line(e)}), flush=True)
        return
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req["op"] == "quit":
            break
        try:
            reply = getattr(worker, req["op"])(req)
        except Exception as e:  # noqa: BLE001 - reported to the harness, which records it per backend
            reply = {"error": _first_line(e)}
        print(REPLY + json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
