"""Tiny text models for the text tests, built here (no downloads): a byte-level BPE tokenizer trained
with the `tokenizers` library on a small multilingual text (so CJK and emoji characters span several
ids), saved through transformers' PreTrainedTokenizerFast with a chat template, beside a LlamaConfig
checkpoint with random weights saved by save_pretrained."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello archc. Tokenizers split text into pieces.",
    "Größe, naïve café, déjà vu — über alles.",
    "日本語のテキストと中文文本。",
    "emoji: 🙂🚀 and symbols ∑ ∫ √",
] * 20
SPECIALS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def byte_bpe(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def metaspace_bpe(vocab_size: int = 200):
    """A SentencePiece-like tokenizer (Metaspace: a piece's leading space is part of it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"] + SPECIALS + [f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def hf_text_model(root: Path, seed: int = 0, chat_template: str | None = CHAT_TEMPLATE, eos_ids: list[int] | None = None) -> Path:
    """root/hf: tokenizer files + a 2-layer random LlamaForCausalLM (GQA) over the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = root / "hf"
    tok = byte_bpe()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(d)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                      bos_token_id=1, eos_token_id=eos_ids if eos_ids is not None else 2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # larger than the default init, so greedy picks are far from ties
    model.save_pretrained(d)
    return d
