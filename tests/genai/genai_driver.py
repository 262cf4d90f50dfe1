"""Greedy generation with onnxruntime-genai, run by the genai tests in genai's own environment
(its CPU wheel replaces onnxruntime-gpu's files, so it lives in a separate venv; see .ci/run).
Needs only onnxruntime_genai. Reads JSON from stdin:
  {"model_dir": DIR, "prompts": [[ids], ...], "max_new_tokens": N, "cuda_graph": false}
and prints {"tokens": [[generated ids], ...]} (one line), or {"error": "..."} when genai refuses."""

from __future__ import annotations

import json
import sys


def main() -> None:
    import onnxruntime_genai as og

    job = json.loads(sys.stdin.read())
    try:
        config = og.Config(job["model_dir"])
        if job.get("provider"):
            config.clear_providers()
            config.append_provider(job["provider"])
            if job.get("cuda_graph"):
                config.set_provider_option(job["provider"], "enable_cuda_graph", "1")
        model = og.Model(config)
    except Exception as e:  # noqa: BLE001 - the message is the answer
        print(json.dumps({"error": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}))
        return
    out = []
    for prompt in job["prompts"]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + job["max_new_tokens"], min_length=0)
        gen = og.Generator(model, params)
        gen.append_tokens([prompt])
        new: list[int] = []
        while not gen.is_done() and len(new) < job["max_new_tokens"]:
            gen.generate_next_token()
            new.append(int(gen.get_next_tokens()[0]))
        out.append(new)
    print(json.dumps({"tokens": out}))


if __name__ == "__main__":
    main()
