"""The hostile-input suite (issue 13, item 6, "Done means"): hypothesis feeds each class of hostile
input the issue found (aliases, markup, types, non-finite values, special files, sizes, long names,
-o onto inputs, signals during compile) to the CLI and asserts the only outcomes allowed:

- success (exit 0, or 1 for diff's "different"), or exit 2 with exactly one message line;
- never a traceback;
- no hang: every in-process command runs under a SIGALRM deadline, every child under a timeout;
- bounded memory: in-process, the peak resident size grows by less than IN_PROCESS_GROWTH over a
  whole test; children run under RLIMIT_AS = hostile_util.MEMORY_BOUND (3 GiB of address space);
- no lost file: every input's bytes are unchanged afterwards, and nothing new is left beside it
  except the outputs asked for.

Examples are few and derandomized (same cases in every CI run); the whole file takes about a
minute on a 2-core box. Light commands run in-process, compile under signals in a child process.
"""

from __future__ import annotations

import os
import resource
import signal
import string
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_util import T, child, deadline, in_process

IN_PROCESS_GROWTH = 400 * 2**20  # bytes of peak RSS growth allowed over one test's examples

FAST = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(max_examples=3, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def allowed(result, *, ok=(0,)) -> None:
    """The outcome rules above, for one command's (code, stdout, stderr)."""
    code, out, err = result
    assert "Traceback" not in out + err, err[-2000:]
    assert code in ok + (2,), (code, out[-500:], err[-2000:])
    if code == 2:
        err_lines = [ln for ln in err.splitlines() if ln.strip()]
        msg = [ln for ln in (err + out).splitlines() if ln.startswith(("error:", "invalid "))]
        assert len(msg) == 1 and len(err_lines) <= 1, (out[-500:], err[-2000:])


def run(argv, capsys, seconds: float = 30, ok=(0,)):
    with deadline(seconds):
        result = in_process([str(a) for a in argv], capsys)
    allowed(result, ok=ok)
    return result


class Files:
    """A scratch folder whose files are snapshotted, to prove nothing a user had was lost."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="hostile-"))

    def write(self, name: str, text: str) -> Path:
        p = self.dir / name
        p.write_text(text)
        return p

    def snapshot(self) -> dict:
        out = {}
        for p in self.dir.iterdir():
            if p.is_file() and not p.is_symlink():
                out[p.name] = p.read_bytes()
            else:
                out[p.name] = os.lstat(p).st_mode
        return out


# ---- aliases -----------------------------------------------------------------------------------

@st.composite
def alias_documents(draw):
    """YAML with anchors and aliases: nested repetition (billion laughs of random shape) and, sometimes,
    an alias inside its own anchor."""
    depth = draw(st.integers(1, 9))
    widths = draw(st.lists(st.integers(1, 12), min_size=depth, max_size=depth))
    lines = ["name: fuzz", "extends: llama", "x0: &x0 [1, 2]"]
    for i in range(1, depth):
        lines.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * widths[i]) + "]")
    if draw(st.booleans()):
        lines.append("loop: &loop [1, *loop]" if draw(st.booleans()) else "loop: &loop {a: *loop}")
    return "\n".join(lines) + "\n"


@FAST
@given(doc=alias_documents(), where=st.sampled_from(["file", "set"]))
def test_aliases(doc, where, capsys):
    start = _peak()
    f = Files()
    if where == "file":
        run(["validate", f.write("a.yaml", doc)], capsys, seconds=20)
    else:
        body = "{" + ", ".join(ln for ln in doc.splitlines() if ln.startswith(("x", "loop"))) + "}"
        run(["validate", "llama", "--set", f"x={body}"], capsys, seconds=20)
    assert _peak() - start < IN_PROCESS_GROWTH


# ---- markup, types, non-finite values ---------------------------------------------------------

MARKUP = st.sampled_from(["[/]", "[bold]", "[red]x[/red]", "[link=file:///etc/passwd]x[/link]", "[", "]",
                          "\\[x]", "[/bold]", ":smile:", "\x1b[31m", "a\nb", "[[/]]"])
FIELDS_INT = ["n_layers", "d_model", "vocab_size", "max_seq_len", "attention.n_heads", "mlp.d_ff", "init.seed"]
FIELDS_FLOAT = ["norm.eps", "init.std", "position.theta", "training.optimizer.lr", "training.grad_clip"]
FIELDS_BOOL = ["attention.qkv_bias", "mlp.bias", "norm.final", "embedding.head_bias"]
VALUES = st.one_of(
    st.sampled_from([".inf", "-.inf", ".nan", "true", "false", "yes", "no", "null", "~", '"64"', '"1e-5"', "1e400",
                     "-1", "0", "0x10", "1_000", "[1]", "{a: 1}", "64.0", "'true'", "!!binary aGk=", "!!python/none"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(string.printable, max_size=12).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
)


@FAST
@given(field=st.sampled_from(FIELDS_INT + FIELDS_FLOAT + FIELDS_BOOL), value=VALUES)
def test_types_and_non_finite_values(field, value, capsys):
    code, out, _ = run(["validate", "llama", "--set", f"{field}={value}"], capsys)
    if code == 0:  # what validated is what the field means: no bool as a count, no string, nothing infinite
        from archc.loader import load_spec

        spec = load_spec("llama", [f"{field}={value}"])
        got = spec
        for part in field.split("."):
            got = getattr(got, part)
        if field in FIELDS_INT:
            assert type(got) is int
        elif field in FIELDS_FLOAT:
            assert type(got) is float and got == got and abs(got) != float("inf")
        else:
            assert type(got) is bool


@FAST
@given(text=MARKUP, where=st.sampled_from(["name", "reference", "description", "file"]),
       command=st.sampled_from(["validate", "show", "diff", "compare"]))
def test_markup_in_user_text(text, where, command, capsys):
    f = Files()
    quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\x1b", "\\e") + '"'
    if where == "file":
        safe = text.replace("/", "_").replace("\n", "_").replace("\x1b", "_") or "x"
        spec = f.write(f"{safe}.yaml", "extends: llama\nname: m\n")
        sets = []
    else:
        spec = f.write("s.yaml", "extends: llama\nname: m\n")
        sets = ["--set", f"{where}={quoted}"]
    argv = {"validate": ["validate", spec], "show": ["show", spec], "diff": ["diff", spec, "palm"],
            "compare": ["compare", spec, "palm"]}[command]
    run(argv + sets, capsys, ok=(0, 1))


# ---- sizes -------------------------------------------------------------------------------------

HUGE = st.sampled_from([10**6, 10**9, 10**12, 2**63 - 1, 2**64])


@FAST
@given(field=st.sampled_from(["n_layers", "vocab_size", "d_model", "max_seq_len", "mlp.d_ff"]), n=HUGE,
       command=st.sampled_from(["validate", "show", "diff", "compare"]))
def test_sizes_light_commands(field, n, command, capsys):
    start = _peak()
    sets = ["--set", f"{field}={n}"]
    if field == "d_model":
        sets += ["--set", "attention.head_dim=128"]
    argv = {"validate": ["validate", "llama"], "show": ["show", "llama"], "diff": ["diff", "llama", "palm", "--set-b", f"{field}={n}"],
            "compare": ["compare", "llama", "palm"]}[command]
    run(argv + (sets if command != "diff" else []), capsys, seconds=30, ok=(0, 1))
    assert _peak() - start < IN_PROCESS_GROWTH


@SLOW
@given(sets=st.sampled_from([["vocab_size=1000000000"], ["d_model=1000000", "attention.n_heads=1000"],
                             ["n_layers=1000000"], ["max_seq_len=1000000000000", "position.kind=learned"]]))
def test_sizes_compile_in_a_bounded_child(sets):
    f = Files()
    argv = ["compile", "llama", *T]
    for s in sets:
        argv += ["--set", s]
    allowed(child(argv + ["-o", f.dir / "m"], timeout=150))
    assert list(f.dir.iterdir()) == []


# ---- special files and long names -------------------------------------------------------------

def _make(kind: str, p: Path) -> Path:
    """Put a hostile `kind` of file at `p` (for "long", a name past the limit beside it); returns its path."""
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", p)
    elif kind == "loop":
        os.symlink(p.with_name(p.name + ".2"), p)
        os.symlink(p, p.with_name(p.name + ".2"))
    elif kind == "dangling":
        os.symlink(p.with_name("nowhere"), p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "long":
        p = p.with_name("n" * 300)
    return p


@FAST
@given(kind=st.sampled_from(["fifo", "dev-zero", "loop", "dangling", "dir", "long"]),
       role=st.sampled_from(["spec", "extends", "hf-config", "hf-weights", "model", "genai", "output"]))
def test_special_files(kind, role, capsys):
    f = Files()
    ok = (0,)
    if role == "spec":
        argv = ["validate", _make(kind, f.dir / "s.yaml")]
    elif role == "extends":
        bad = _make(kind, f.dir / "base.yaml")
        argv = ["validate", f.write("s.yaml", f"extends: {bad.name}\nname: x\n")]
    elif role in ("hf-config", "hf-weights"):
        hf = f.dir / "hf"
        hf.mkdir()
        if role == "hf-weights":
            (hf / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, '
                                             '"num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}')
            ok = (0,) if kind in ("dangling", "long", "loop") else ()  # no readable checkpoint: the spec alone is written
        _make(kind, hf / ("config.json" if role == "hf-config" else "model.safetensors"))
        argv = ["import-hf", hf, "-o", f.dir / "out.yaml"]
    elif role in ("model", "genai"):
        m = f.dir / "m"
        m.mkdir()
        (m / "spec.yaml").write_text("extends: llama\nname: x\n")
        if role == "genai":
            (m / "model.onnx").write_bytes(b"not onnx")
        _make(kind, m / ("model.onnx" if role == "model" else "genai_config.json"))
        argv = ["run", m, "--prompt-ids", "1", "--device", "cpu"]
    else:
        argv = ["diff", "llama", "palm", "-o", _make(kind, f.dir / "out.json"), "--format", "json"]
        ok = (0, 1) if kind in ("dangling", "long") else ()
    before = f.snapshot()
    run(argv, capsys, seconds=30, ok=ok)
    after = f.snapshot()
    for name, content in before.items():  # nothing the user had was replaced or removed
        assert after.get(name) == content, name


@FAST
@given(n=st.integers(200, 400), where=st.sampled_from(["input", "output", "extends"]))
def test_long_names(n, where, capsys):
    f = Files()
    name = "L" * (n - 5) + ".yaml"
    if where == "input":
        argv = ["validate", f.dir / name]
        if n <= 255:
            (f.dir / name).write_text("extends: llama\nname: x\n")
    elif where == "extends":
        argv = ["validate", f.write("s.yaml", f"extends: {name}\nname: x\n")]
    else:
        argv = ["diff", "llama", "palm", "-o", f.dir / name, "--format", "json"]
    code, _, err = run(argv, capsys, ok=(0, 1))
    if n > 255:
        assert code == 2 and "too long" in err
    elif where == "output":
        assert (f.dir / name).exists()  # a legal name is written; the temporary name does not push it over


# ---- -o onto inputs ------------------------------------------------------------------------------

@FAST
@given(command=st.sampled_from(["diff-a", "diff-b", "compare", "draw", "import-hf", "compile-dir", "compile-hf"]),
       via=st.sampled_from(["same", "hardlink", "symlink", "dotdot"]))
def test_output_onto_inputs(command, via, capsys):
    f = Files()
    spec = f.write("in.yaml", "extends: llama\nname: mine\n")
    hf = f.dir / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, '
                                    '"num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}')
    (hf / "tokenizer.json").write_text("{}")
    victim = {"import-hf": hf / "config.json", "compile-hf": hf, "compile-dir": f.dir}.get(command, spec)

    def reach(p: Path) -> Path:
        if via == "hardlink" and p.is_file():
            os.link(p, f.dir / "link")
            return f.dir / "link"
        if via == "symlink":
            os.symlink(p, f.dir / "sym")
            return f.dir / "sym"
        if via == "dotdot":
            return p.parent / "." / ".." / p.parent.name / p.name
        return p

    out = reach(victim)
    argv = {"diff-a": ["diff", spec, "llama", "-o", out, "--format", "json"],
            "diff-b": ["diff", "llama", spec, "-o", out, "--format", "json"],
            "compare": ["compare", spec, "palm", "-o", out, "--format", "csv"],
            "draw": ["draw", spec, "-o", out, "--format", "dot"],
            "import-hf": ["import-hf", hf, "-o", out],
            "compile-dir": ["compile", spec, *T, "-o", out, "--force"],
            "compile-hf": ["compile", hf, "-o", out, "--force"]}[command]
    before_spec, before_hf = spec.read_bytes(), {p.name: p.read_bytes() for p in hf.iterdir()}
    code, _, _ = run(argv, capsys, seconds=60, ok=(0, 1))
    assert code == 2  # every case writes onto an input or a folder holding one
    assert spec.read_bytes() == before_spec
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before_hf


# ---- signals during compile ---------------------------------------------------------------------

# What `archc compile SPEC -o m` writes (no tokenizer for a library spec): all of it, or nothing.
COMPLETE_MODEL_DIR = [".archc-manifest.json", "genai_config.json", "model.onnx", "model.onnx.data", "spec.yaml"]

@pytest.mark.slow
@SLOW
@given(sig=st.sampled_from([signal.SIGTERM, signal.SIGINT]), delay=st.floats(0.0, 1.0))
def test_signals_during_compile(sig, delay):
    """Whenever the signal lands (while loading, building or writing), nothing is left behind but a
    complete model directory (the compile finished first) or nothing at all."""
    f = Files()
    keep = f.write("keep.txt", "mine")
    proc = child(["compile", "llama", "--set", "n_layers=4", "--set", "d_model=256", "--set", "attention.n_heads=4",
                  "--set", "vocab_size=16000", "--set", "max_seq_len=64", "-o", f.dir / "m"], start=True)
    t0 = time.monotonic()  # the signal lands while compile writes (the work directory exists) or after
    while proc.poll() is None and not any(p.name.startswith(".archc.") for p in f.dir.iterdir()):
        assert time.monotonic() - t0 < 120
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-2000:]
    names = sorted(p.name for p in f.dir.iterdir())
    if proc.returncode != 0:
        assert proc.returncode in (130, 143, -sig), (proc.returncode, err[-1000:])
    if proc.returncode == 0 or names == ["keep.txt", "m"]:
        # Finished, or the signal landed after the output was renamed into place (on an idle machine
        # the compile can finish within the delay): then it must be the complete model directory.
        assert names == ["keep.txt", "m"], names
        assert sorted(p.name for p in (f.dir / "m").iterdir()) == sorted(COMPLETE_MODEL_DIR), \
            sorted(p.name for p in (f.dir / "m").iterdir())
    else:
        assert names == ["keep.txt"], names
    assert keep.read_text() == "mine"
