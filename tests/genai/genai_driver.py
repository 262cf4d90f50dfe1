"""Greedy generation with onnxruntime-genai, run by tests/genai in genai's own environment (its CPU
wheel replaces onnxruntime-gpu's files, so it lives in a separate venv made by scripts/genai_env.sh).
Needs only onnxruntime_genai. Reads JSON from stdin:
  {"jobs": [{"model_dir": DIR, "prompts": [[ids], ...], "max_new_tokens": N}, ...]}
and prints {"results": [{"tokens": [[generated ids], ...]} or {"error": "first line of genai's message"}]}.
genai stops at its config's eos id; the caller compares up to it."""

from __future__ import annotations

import json
import sys


def run_job(og, job: dict) -> dict:
    try:
        config = og.Config(job["model_dir"])
        if job.get("cpu"):  # a cuda-target export names the CUDA provider; the CPU wheel runs it on the CPU
            config.clear_providers()
        model = og.Model(config)
    except Exception as e:  # noqa: BLE001 - genai's refusal is the answer
        msg = str(e).strip()
        return {"error": msg.splitlines()[0] if msg else type(e).__name__}
    out = []
    for prompt in job["prompts"]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + job["max_new_tokens"])
        gen = og.Generator(model, params)
        gen.append_tokens([prompt])
        new: list[int] = []
        while not gen.is_done() and len(new) < job["max_new_tokens"]:
            gen.generate_next_token()
            new.append(int(gen.get_next_tokens()[0]))
        out.append(new)
        del gen
    return {"tokens": out}


def main() -> None:
    import onnxruntime_genai as og

    jobs = json.loads(sys.stdin.read())["jobs"]
    print(json.dumps({"version": og.__version__, "results": [run_job(og, j) for j in jobs]}))


if __name__ == "__main__":
    main()
