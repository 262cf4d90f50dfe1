"""onnxruntime-genai with CUDA graphs against archc's runner, on a TinyLlama-shaped export (GPU).

    PYTHONPATH=/tmp/site:SRC python -m benchmarks.genai_cuda_graph OUT_JSON [PROMPTS [MODES]] [--force]

Compiles the llama spec at TinyLlama-1.1B's shape (22 layers, d_model 2048, 32 heads, 4 kv heads,
d_ff 5632, vocab 32000; archc's seeded init) with `--target cuda --dtype fp16`, then greedy-decodes
one random prompt of 16, 512 and 2048 tokens with (a) archc.runner.Session on CUDA, (b) genai
without CUDA graphs, (c) genai with enable_cuda_graph=1, genai's max_length = prompt + new tokens
(the static [batch, max_length] attention mask of its graph mode, src/models/position_inputs.cpp).
Writes {prompt length: {runner, genai, genai_graph}} token lists to OUT_JSON. SRC picks which archc
tree compiles the model (the test compares a tree before and after a fix)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import outputs

SHAPE = ["n_layers=22", "d_model=2048", "attention.n_heads=32", "attention.kv_heads=4", "attention.sharing=gqa",
         "mlp.d_ff=5632", "vocab_size=32000", "max_seq_len=4096"]
PROMPTS = (16, 512, 2048)
NEW = 16


def genai_model(model_dir: Path, cuda_graph: bool):
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.clear_providers()
    config.append_provider("cuda")
    if cuda_graph:
        config.set_provider_option("cuda", "enable_cuda_graph", "1")
    return og.Model(config)


def genai_tokens(model, prompt: list[int]) -> list[int]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + NEW)
    gen = og.Generator(model, params)
    gen.append_tokens([prompt])
    out: list[int] = []
    while not gen.is_done() and len(out) < NEW:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    del gen
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_json", type=Path, metavar="OUT_JSON", help="JSON file of the token lists (an existing one: --force)")
    ap.add_argument("prompts", nargs="?", default=",".join(map(str, PROMPTS)), help="prompt lengths, comma-separated, of %(default)s")
    ap.add_argument("modes", nargs="?", default="genai,genai_graph", help="genai modes, comma-separated (default %(default)s)")
    outputs.add_force(ap)
    args = ap.parse_args(argv)
    outputs.check_outputs(ap, args.force, ("OUT_JSON", args.out_json), make_folder=False)
    out_json = args.out_json
    prompts = [int(x) for x in args.prompts.split(",")]
    modes = args.modes.split(",")
    import archc
    from archc.runner import Session
    from exporters.onnx_export import export

    spec = archc.load_spec(Path(archc.__file__).resolve().parent.parent / "specs" / "llama.yaml", SHAPE)
    result: dict = {"archc": str(Path(archc.__file__).resolve().parent), "prompts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "tinyllama"
        t0 = time.perf_counter()
        export(archc.compile(spec), d, target="cuda", dtype="fp16")
        cfg = json.loads((d / "genai_config.json").read_text())
        cfg["model"]["eos_token_id"] = 31999  # random weights: keep genai's placeholder stop id out of the way
        (d / "genai_config.json").write_text(json.dumps(cfg))
        result["compile_s"] = round(time.perf_counter() - t0, 1)
        rng = np.random.default_rng(0)
        s = Session(d, device="cuda")
        result["runner_cuda_graph"] = s.cuda_graph
        inputs = {L: rng.integers(3, 31999, L).tolist() for L in PROMPTS}
        for L in prompts:
            result["prompts"][L] = {"runner": s.generate([inputs[L]], NEW).ids[0]}
        del s
        for key in modes:
            model = genai_model(d, key == "genai_graph")
            for L in prompts:
                row = result["prompts"][L]
                try:
                    row[key] = genai_tokens(model, inputs[L])
                except Exception as e:  # noqa: BLE001 - recorded
                    row[key] = f"error: {str(e).splitlines()[0][:300]}"
                row[f"{key}_agrees"] = row[key] == row["runner"]
                print(L, key, row, flush=True)
            del model
    import onnxruntime as ort
    import onnxruntime_genai as og
    import torch

    result["card"] = torch.cuda.get_device_name(0)
    result["onnxruntime"], result["onnxruntime_genai"] = ort.__version__, og.__version__
    out_json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "prompts"}))


if __name__ == "__main__":
    main()
