"""Text in, text out (`archc run DIR --prompt/--prompts/--chat`, archc.text) against transformers.

Oracle: the Hugging Face directory loaded by transformers (AutoTokenizer + LlamaForCausalLM.from_pretrained,
generate with do_sample=False, decode with skip_special_tokens) — tokenizer, chat template, eos ids and
the model all come from the same files archc compiles. The tokenizer is a byte-level BPE trained here on
text with CJK and emoji, so characters span several ids and streaming must hold incomplete UTF-8."""

from __future__ import annotations

import json
import random

import pytest

from conftest import run_cli
from text_models import CHAT_TEMPLATE, byte_bpe, hf_text_model, metaspace_bpe

pytestmark = pytest.mark.slow  # a transformers model per module and several compiles: ~1 min on 2 cores
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["Hello world", "日本語のテキスト", "emoji: 🙂 café"]
N_NEW = 24


def _oracle(hf_dir, ids: list[int], n_new: int = N_NEW) -> list[int]:
    from transformers import LlamaForCausalLM

    model = _oracle.cache.get(str(hf_dir))
    if model is None:
        model = _oracle.cache[str(hf_dir)] = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n_new, do_sample=False)
    return out[0, len(ids):].tolist()


_oracle.cache = {}


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory):
    """(hf_dir, compiled dir, transformers tokenizer). generation_config's eos ids get one token that the
    model really generates for PROMPTS[0] (random weights rarely pick </s>), so stopping is exercised."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("text")
    hf = hf_text_model(root)
    tok = AutoTokenizer.from_pretrained(hf)
    stop = _oracle(hf, tok(PROMPTS[0])["input_ids"])[5]
    _oracle.cache.clear()
    gen = json.loads((hf / "generation_config.json").read_text())
    gen["eos_token_id"] = [2, stop]
    (hf / "generation_config.json").write_text(json.dumps(gen))
    from archc.cli import main

    try:
        rc = main(["compile", str(hf), "-o", str(root / "out")])
    except SystemExit as e:
        rc = e.code
    assert rc in (0, None)
    return hf, root / "out", tok


def test_compile_copies_tokenizer_files(text_dirs):
    hf, out, _ = text_dirs
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (hf / name).read_bytes(), name
    cfg = json.loads((out / "genai_config.json").read_text())["model"]
    stop = json.loads((hf / "generation_config.json").read_text())["eos_token_id"]
    assert cfg["eos_token_id"] == stop and cfg["bos_token_id"] == 1 and cfg["pad_token_id"] == 0


def test_compile_spec_with_hf_weights_copies_tokenizer(text_dirs, tmp_path, capsys):
    """import-hf then compile the spec with --weights HF_DIR: the tokenizer travels with the checkpoint."""
    hf, out, _ = text_dirs
    rc, _, err = run_cli(["import-hf", str(hf), "-o", str(tmp_path / "m.yaml")], capsys)
    assert rc == 0, err
    rc, stdout, err = run_cli(["compile", str(tmp_path / "m.yaml"), "--weights", str(hf), "-o", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert (tmp_path / "o" / "tokenizer.json").read_bytes() == (hf / "tokenizer.json").read_bytes()
    assert "tokenizer: tokenizer.json" in stdout


def test_compile_run_folder_carries_its_tokenizer(tmp_path, capsys):
    """A directory with spec.yaml + tokenizer.json (what `archc train` writes for text data) compiles
    with its tokenizer, and `archc run --prompt` then works on the result."""
    import yaml

    from conftest import tiny_spec

    run = tmp_path / "run"
    run.mkdir()
    tok = byte_bpe()
    spec = tiny_spec("llama", [f"vocab_size={tok.get_vocab_size()}"])
    (run / "spec.yaml").write_text(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))
    tok.save(str(run / "tokenizer.json"))
    rc, stdout, err = run_cli(["compile", str(run), "-o", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert (tmp_path / "o" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    rc, stdout, err = run_cli(["run", str(tmp_path / "o"), "--prompt", "hello", "--max-new-tokens", "4", "--device", "cpu"], capsys)
    assert rc == 0 and stdout.endswith("\n"), err


def test_encode_matches_transformers(text_dirs):
    from archc.text import Text

    _, out, tok = text_dirs
    t = Text.load(out)
    for p in PROMPTS + ["", "  spaces  and\nnewlines"]:
        assert t.encode(p) == tok(p)["input_ids"], p
    assert t.eos_ids == json.loads((out / "generation_config.json").read_text())["eos_token_id"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_streams_transformers_text(text_dirs, prompt, capsys):
    hf, out, tok = text_dirs
    want_ids = _oracle(hf, tok(prompt)["input_ids"])
    rc, stdout, err = run_cli(["run", str(out), "--prompt", prompt, "--max-new-tokens", str(N_NEW), "--device", "cpu"], capsys)
    assert rc == 0, err
    assert stdout == tok.decode(want_ids, skip_special_tokens=True) + "\n"


def test_prompts_jsonl_batch_and_eos(text_dirs, tmp_path, capsys):
    hf, out, tok = text_dirs
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in PROMPTS))
    rc, stdout, err = run_cli(["run", str(out), "--prompts", str(f), "--max-new-tokens", str(N_NEW), "--device", "cpu"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    stops = set(json.loads((out / "generation_config.json").read_text())["eos_token_id"])
    for r in rows:
        want = _oracle(hf, tok(r["prompt"])["input_ids"])
        assert r["ids"] == want  # transformers stops at the same eos ids
        assert r["completion"] == tok.decode(want, skip_special_tokens=True)
        assert r["finish_reason"] == ("eos" if want[-1] in stops else "length")
    assert rows[0]["finish_reason"] == "eos" and len(rows[0]["ids"]) <= 6  # stopped early, at the planted stop id


def test_max_new_tokens_bounds(text_dirs, capsys, tmp_path):
    _, out, _ = text_dirs
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": PROMPTS[1]}) + "\n")
    rc, stdout, _ = run_cli(["run", str(out), "--prompts", str(f), "--max-new-tokens", "3", "--device", "cpu"], capsys)
    row = json.loads(stdout)
    assert rc == 0 and len(row["ids"]) <= 3
    assert row["finish_reason"] == "length" or len(row["ids"]) < 3


def test_chat_template_matches_transformers(text_dirs, capsys):
    from archc.text import Text

    hf, out, tok = text_dirs
    msg = "What is 日本語?"
    want = tok.apply_chat_template([{"role": "user", "content": msg}], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert Text.load(out).chat(msg) == list(want)
    gen = _oracle(hf, list(want))
    rc, stdout, err = run_cli(["run", str(out), "--prompt", msg, "--chat", "--max-new-tokens", str(N_NEW), "--device", "cpu"], capsys)
    assert rc == 0, err
    assert stdout == tok.decode(gen, skip_special_tokens=True) + "\n"


def test_prompts_jsonl_chat_messages(text_dirs, tmp_path, capsys):
    """--prompts with --chat: a "prompt" is one user message; "messages" is the whole conversation."""
    from archc.text import Text

    hf, out, tok = text_dirs
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "café?"}]
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": msgs}) + "\n" + json.dumps({"prompt": "Hi"}) + "\n")
    rc, stdout, err = run_cli(["run", str(out), "--prompts", str(f), "--chat", "--max-new-tokens", "8", "--device", "cpu"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    for row, conv in zip(rows, [msgs, [{"role": "user", "content": "Hi"}]]):
        want = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        want = list(want["input_ids"] if hasattr(want, "keys") else want)
        assert Text.load(out).chat(conv) == want
        assert row["ids"] == _oracle(hf, want, 8)


def test_chat_template_features_match_transformers():
    """tojson without HTML escaping, loop controls, raise_exception, trim/lstrip blocks: the same text as
    transformers' renderer (and a template error is one UserError line)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from archc.errors import UserError
    from archc.text import render_chat_template

    template = ("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}\n"
                "  [{{ m['role'] | upper }}] {{ m | tojson }}\n{% endfor %}{% if add_generation_prompt %}<go>{% endif %}")
    msgs = [{"role": "user", "content": "<b>&</b> é"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "x"}]
    want = render_jinja_template(conversations=[msgs], chat_template=template, add_generation_prompt=True)[0][0]
    assert render_chat_template(template, msgs, add_generation_prompt=True) == want
    with pytest.raises(UserError, match="only user messages"):
        render_chat_template("{{ raise_exception('only user messages') }}", msgs)
    with pytest.raises(UserError):  # the sandbox refuses attribute escapes
        render_chat_template("{{ messages.__class__.__mro__ }}", msgs)


@pytest.mark.parametrize("make", [byte_bpe, metaspace_bpe])
def test_detokenizer_pieces_join_to_decode(make):
    """Random id sequences (invalid UTF-8 and split characters included): the streamed pieces joined
    equal decode(all ids). Negative control: decoding each id alone does not."""
    from archc.text import Detokenizer

    tok = make()
    vocab = tok.get_vocab_size()
    rng = random.Random(0)
    naive_differs = False
    for _ in range(60):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        d = Detokenizer(tok)
        pieces = [d.push(i) for i in ids] + [d.flush()]
        full = tok.decode(ids, skip_special_tokens=True)
        assert "".join(pieces) == full, ids
        naive_differs |= "".join(tok.decode([i], skip_special_tokens=True) for i in ids) != full
    assert naive_differs
    # a multi-byte character split over ids streams nothing until it is whole
    ids = tok.encode("🙂", add_special_tokens=False).ids
    if len(ids) > 1:
        d = Detokenizer(tok)
        assert [d.push(i) for i in ids][:-1] == [""] * (len(ids) - 1) and "".join(d.emitted) == "🙂"


def test_streaming_is_incremental(text_dirs):
    from archc import text as textlib
    from archc.runner import Session

    _, out, _ = text_dirs
    t = textlib.Text.load(out)
    t.eos_ids = []
    pieces = []
    done, _ = textlib.generate(Session(out, device="cpu"), t, [t.encode(PROMPTS[0])], 12, on_text=lambda b, s: pieces.append(s))
    assert len(pieces) > 1 and "".join(pieces) == done[0].text


def test_save_tokenizer_hook_loads_in_transformers(tmp_path):
    """archc.text.save_tokenizer (what `archc train` calls): transformers reads the files back to the same ids."""
    from transformers import AutoTokenizer

    from archc.text import Text, save_tokenizer

    tok = byte_bpe()
    save_tokenizer(tok, tmp_path, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    t = Text.load(tmp_path)
    assert t.eos_ids == [2]
    for p in PROMPTS:
        assert t.encode(p) == hf(p)["input_ids"]
    want = hf.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert t.chat("hi") == list(want)


# ---- refusals: one line, exit 2 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory):
    import archc
    from conftest import tiny_spec
    from exporters.onnx_export import export

    d = tmp_path_factory.mktemp("bare") / "m"
    export(archc.compile(tiny_spec("llama")), d)
    return d


def test_no_tokenizer_names_what_to_add(bare_model, capsys):
    rc, out, err = run_cli(["run", str(bare_model), "--prompt", "hi", "--device", "cpu"], capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "tokenizer.json" in err and "--prompt-ids" in err


def test_prompt_ids_still_work(bare_model, capsys):
    rc, out, err = run_cli(["run", str(bare_model), "--prompt-ids", "1,2,3", "--max-new-tokens", "3", "--device", "cpu"], capsys)
    assert rc == 0 and len(out.strip().split(",")) == 3, err


@pytest.mark.parametrize("argv,needle", [
    ([], "exactly one of"),
    (["--prompt", "a", "--prompt-ids", "1"], "exactly one of"),
    (["--prompt-ids", "1", "--chat"], "--chat"),
])
def test_prompt_source_usage(bare_model, capsys, argv, needle):
    rc, _, err = run_cli(["run", str(bare_model), *argv, "--device", "cpu"], capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_chat_without_template(tmp_path, capsys):
    hf = hf_text_model(tmp_path, chat_template=None)
    d = tmp_path / "out"
    rc, _, err = run_cli(["compile", str(hf), "-o", str(d)], capsys)
    assert rc == 0, err
    for name in ("chat_template.jinja",):
        assert not (d / name).exists()
    rc, _, err = run_cli(["run", str(d), "--prompt", "hi", "--chat", "--device", "cpu"], capsys)
    assert rc == 2 and "chat template" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("line,needle", [("not json", "p.jsonl:2: not JSON"), ('{"text": 1}', "p.jsonl:2: give"), ("[1]", "JSON object")])
def test_bad_jsonl_line(text_dirs, tmp_path, capsys, line, needle):
    _, out, _ = text_dirs
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n' + line + "\n")
    rc, stdout, err = run_cli(["run", str(out), "--prompts", str(f), "--device", "cpu"], capsys)
    assert rc == 2 and needle in err and stdout == ""
