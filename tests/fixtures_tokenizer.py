"""Offline test assets: a byte-level BPE tokenizer trained on MATH-500 text and a tiny random Qwen3.

Reusable by any test: ``build_tokenizer()`` gives a ``PreTrainedTokenizerFast`` with a ChatML template
(Qwen3-style ``enable_thinking`` branch); ``save_tiny_qwen3(folder)`` writes that tokenizer next to a
random ``Qwen3ForCausalLM`` (safetensors), i.e. a folder ``--model`` accepts. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The evaluation data beside the repository (read by path, never copied)."""
    return repo_root().parent / "shared" / "data"


def read_jsonl(name: str, limit: int | None = None) -> list[dict]:
    rows = []
    with (shared_data_dir() / name).open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def build_tokenizer(n_rows: int = 300, vocab_size: int = 1024):
    """A byte-level BPE trained on the first n_rows MATH-500 problems and solutions, as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [r["problem"] + "\n" + r["solution"] for r in read_jsonl("math500.jsonl", n_rows)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML_TEMPLATE)


def save_tiny_qwen3(folder: str | Path, tokenizer=None, seed: int = 0) -> Path:
    """Writes a random 2-layer Qwen3 (safetensors) and the tokenizer into folder; returns the folder."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=eos[0], pad_token_id=eos[1],
                         bos_token_id=eos[1])
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos[1])
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
