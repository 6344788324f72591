"""A small character-level Hugging Face tokenizer for the built-in tasks, with a ChatML chat template.

Every printable ASCII character and the newline is one token, so any English prompt (the default
instruction included) encodes without ``<unk>``, and numbers are spelled digit by digit, which is what a
tiny model needs to learn arithmetic. A few strings that recur in every prompt or response are single
tokens: the chat markers, the role words and ``\\boxed{``. The vocabulary is the same for every task (104
tokens), so one tiny model can be trained on several tasks; the task name is only recorded in the config.

Ids: 0 ``<pad>``, 1 ``<unk>``, 2 ``<|im_start|>``, 3 ``<|im_end|>`` (the EOS a response ends with), then the
characters in code-point order (newline last), then the multi-character tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

PAD, UNK, IM_START, IM_END = "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, UNK, IM_START, IM_END)
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)
# Matched anywhere in the text before the per-character split, so "user" inside a word is one token too.
WORD_TOKENS = ("\\boxed{", "user", "assistant", "system")
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(CHARACTERS) + len(WORD_TOKENS)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# The files save_pretrained writes (the chat template goes into tokenizer_config.json).
FILES = ("tokenizer.json", "tokenizer_config.json")
# Key in tokenizer_config.json that marks a folder as written by tipjax.tasks.
MARKER = "tipjax_task"


def build(task: str = ""):
    """The tokenizer as a ``transformers.PreTrainedTokenizerFast``; ``task`` is recorded in its config."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast  # heavy import, only when a tokenizer is asked for

    # Words in the model's vocabulary too, so tokenizer.vocab_size == len(tokenizer): no separate added ids.
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS + WORD_TOKENS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    core.decoder = decoders.Fuse()  # concatenate: no spaces inserted between characters
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, normalized=False) for t in WORD_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK, pad_token=PAD, eos_token=IM_END,
                                   chat_template=CHATML_TEMPLATE, clean_up_tokenization_spaces=False,
                                   **{MARKER: task})


def save(tokenizer, folder: str | Path) -> Path:
    """Writes ``FILES`` into folder (created if needed), each replaced atomically; returns the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tipjax-tokenizer-", dir=folder))
    except OSError as err:  # name the folder, not the staging directory
        raise OSError(err.errno, err.strerror, str(folder)) from err
    try:
        # The template in tokenizer_config.json (not chat_template.jinja) also loads in older transformers.
        tokenizer.save_pretrained(staging, save_jinja_files=False)
        config_path = staging / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        # transformers 5 writes its internal class name, which transformers 4 cannot resolve.
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        for name in FILES:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def written_by_tipjax(folder: str | Path) -> bool:
    """Whether folder's tokenizer_config.json carries the tipjax.tasks marker."""
    try:
        return MARKER in json.loads((Path(folder) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
