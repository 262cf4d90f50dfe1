"""Render the JSON of benchmarks/run_standard.py as the Markdown tables of RESULTS.md.

    python3 -m benchmarks.render_results results.json [--into benchmarks/RESULTS.md]

One file of the one-invocation runner (its `kind` is "archc-standard-run") renders as one run: the
card, date and versions, one limits line, every case, then the failed cases (a child that died, with
the reason) and the skipped ones. Several files (the earlier multi-invocation JSONs in
benchmarks/results/) are merged as before, one limits line per invocation.
With --into, the tables replace what stands between the markers
`<!-- BEGIN generated -->` and `<!-- END generated -->` in that file (the prose around them stays).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- BEGIN generated -->", "<!-- END generated -->"


def _f(x, fmt="{:.1f}"):
    return "–" if x is None else fmt.format(x)


def merge(reports: list[dict]) -> dict:
    """Several invocations of run_standard on the same machine: runs concatenated, each keeping its limits.
    One report is taken as it is."""
    if len(reports) == 1:
        return reports[0]
    out = {"environment": reports[0]["environment"], "limits": reports[0]["limits"], "runs": [], "skipped": [], "parts": []}
    for r in reports:
        out["parts"].append({"date": r["environment"]["date"], "limits": r["limits"], "n_runs": len(r["runs"])})
        for run in r["runs"]:
            out["runs"].append(dict(run, limits=r["limits"]))
        out["skipped"] += r.get("skipped", [])
        out.setdefault("failed", []).extend(r.get("failed", []))
    done = {(x.get("family"), x["dtype"], x["batch"], x["prompt_len"]) for x in out["runs"]}
    out["skipped"] = [c for c in out["skipped"] if (c["family"], c["dtype"], c["batch"], c["prompt"]) not in done]
    return out


def render(report: dict) -> str:
    env, lim = report["environment"] or {}, report["limits"]
    card = f"**{env['card']}** ({env.get('card_memory_gib')} GiB)" if env.get("card") else "none (a CPU run)"
    out = [f"Card: {card}. Date: {env.get('date')}. "
           f"torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, "
           f"onnxruntime {env.get('onnxruntime')}, onnx {env.get('onnx')}, Python {env.get('python')}.", ""]
    if "parts" not in report and report.get("kind") == "archc-standard-run":
        out.append(_one_run(report))
    for part in report.get("parts") or ([] if report.get("kind") == "archc-standard-run" else
                                        [{"date": env.get("date"), "limits": lim, "n_runs": len(report["runs"])}]):
        pl = part["limits"]
        g = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in pl["gemm_flops_per_s"].items())
        out.append(f"- Invocation started {part['date']} ({part['n_runs']} cases). Limits measured at its start, in the same process: "
                   f"copy bandwidth **{pl['copy_bytes_per_s'] / 1e12:.2f} TB/s** (device-to-device copy of "
                   f"{pl['copy_buffer_bytes'] / 2**30:.0f} GiB, read + write), GEMM {pl['gemm_n']}³ {g}.")
    out.append("")
    out += ["| model | dtype | batch | prompt | backend | decode tok/s | ms/token | % roofline | prefill ms | % GEMM floor | peak GiB | tokens = ref | note |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in report["runs"]:
        roof = run["roofline"]
        head = f"| {run['spec']} ({roof['params'] / 1e9:.2f} B) | {run['dtype']} | {run['batch']} | {run['prompt_len']} |"
        out.append(f"{head} *limit* | {roof['decode_tok_s']:.0f} | {roof['decode_tpot_ms']:.3f} | 100 | {roof['prefill_floor_ms']:.2f} | 100 | | | roofline / floor |")
        for b in run["backends"]:
            ref = "ref" if b["tokens_agree"] is None and not b["error"] else _f(b["tokens_agree"], "{}")
            out.append(f"{head} {b['backend']} | {_f(b['decode_tok_s'])} | {_f(b['decode_tpot_ms'], '{:.3f}')} | "
                       f"{_f(b['frac_decode_roofline'] and 100 * b['frac_decode_roofline'], '{:.0f}')} | {_f(b['prefill_ms'], '{:.2f}')} | "
                       f"{_f(b['frac_prefill_floor'] and 100 * b['frac_prefill_floor'], '{:.0f}')} | {_f(b['peak_mem_gib'], '{:.2f}')} | "
                       f"{ref} | {_note(b)} |")
    if report.get("failed"):
        out += ["", "**Failed** (the group's process died or timed out; the cases it had measured are above):", ""]
        out += [f"- {c['family']} {c['dtype']} batch {c['batch']} prompt {c['prompt']}: {_md(c.get('reason') or '?')[:400]}"
                for c in report["failed"]]
    if report.get("skipped"):
        reason = lambda c: c.get("reason") or "time budget"  # noqa: E731  (old files: only the budget skipped)
        out += ["", "Not run: " + "; ".join(f"{c['family']} {c['dtype']} b{c['batch']} p{c['prompt']} ({reason(c)})"
                                              for c in report["skipped"])]
    out += ["", *targets(report)]
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _note(b: dict) -> str:
    if b["error"]:
        return _md(b["error"])[:90]
    if b.get("logits") == "last":
        return "logits last"
    return "head on the last position" if b.get("head_positions") == "last" else ""


def _one_run(report: dict) -> str:
    lim, st, env = report["limits"], report.get("state", {}), report["environment"] or {}
    wall = f", {st['wall_s'] / 60:.1f} min" if st.get("wall_s") else " (not finished: the figures measured so far)"
    groups = ", ".join(f"{g['family']} {g['dtype']} {g['wall_s'] / 60:.1f} min" + ("" if g["status"] == "ok" else " **failed**")
                       for g in report.get("groups", []))
    if lim is None:
        return f"- One invocation started {st.get('started')}{wall}; no group measured the limits."
    g = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in lim["gemm_flops_per_s"].items())
    return (f"- One invocation of `benchmarks/run_standard.py`, started {st.get('started')}{wall}, archc `{env.get('archc_commit')}`: "
            f"{len(report['runs'])} cases measured, {len(report.get('failed', []))} failed, {len(report.get('skipped', []))} not run. "
            f"Each (family, dtype) group ran in its own process ({groups}). "
            f"Limits measured once, at the start of the run: copy bandwidth **{lim['copy_bytes_per_s'] / 1e12:.2f} TB/s** "
            f"(device-to-device copy of {lim['copy_buffer_bytes'] / 2**30:.2f} GiB, read + write), GEMM {lim['gemm_n']}³ {g}.")


def targets(report: dict) -> list[str]:
    """The issue's targets, read off the runs."""
    lines = ["**Targets** (from the runs above):", ""]
    for run in report["runs"]:
        if run["batch"] != 1 or run["dtype"] != "fp16" or not run["backends"]:
            continue
        by = {b["backend"]: b for b in run["backends"] if not b["error"]}
        ort = by.get("ort")
        if not ort or ort["decode_tok_s"] is None:
            continue
        if not ort["frac_decode_roofline"]:
            continue
        parts = [f"ORT decode {100 * ort['frac_decode_roofline']:.0f}% of roofline"]
        if "hf-eager" in by and by["hf-eager"]["decode_tok_s"]:
            parts.append(f"{ort['decode_tok_s'] / by['hf-eager']['decode_tok_s']:.2f}x HF eager")
        if "hf-compile" in by and by["hf-compile"]["decode_tok_s"]:
            parts.append(f"{ort['decode_tok_s'] / by['hf-compile']['decode_tok_s']:.2f}x HF static cache + torch.compile")
        if run["prompt_len"] == 2048 and ort["frac_prefill_floor"]:
            parts.append(f"prefill {100 * ort['frac_prefill_floor']:.0f}% of the GEMM rate")
        lines.append(f"- {run['spec']} prompt {run['prompt_len']}: " + ", ".join(parts))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("json", type=Path, nargs="+", help="one or more run_standard JSON files (same machine session)")
    ap.add_argument("--into", type=Path, help="an existing markdown file (benchmarks/RESULTS.md): the part between its "
                    "BEGIN and END markers is replaced in place, on purpose; the rest of it is kept (no --force needed)")
    args = ap.parse_args()
    text = render(merge([json.loads(p.read_text()) for p in args.json]))
    if not args.into:
        print(text)
        return 0
    doc = args.into.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{args.into}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    pre, rest = doc.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    args.into.write_text(f"{pre}{BEGIN}\n{text}\n{END}{post}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
