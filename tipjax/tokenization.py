"""Teacher/student compatibility, checked at start-up before anything compiles.

OPD compares the two models' next-token distributions position by position, so they must share one
tokenizer: the same token -> id map and the same chat-template rendering. Padded embedding tables of one
family (e.g. Qwen 151936 vs 152064) are fine: both heads are sliced to the shared real vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_PROBE = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 1+1?"},
          {"role": "assistant", "content": "\\boxed{2}"}, {"role": "user", "content": "And 2+2?"}]


class IncompatibleModels(ValueError):
    """Teacher and student cannot be distilled into one another as configured."""


def load_tokenizer(path: str | None):
    """The HF tokenizer of a local folder, or None when the folder has none (random models)."""
    if path is None or not any(Path(path).glob("tokenizer*")):
        return None
    import transformers  # only at start-up: transformers objects never enter jitted code

    return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _render(tokenizer) -> str | None:
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    return tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)


def check_tokenizers(student_tok, teacher_tok) -> None:
    if student_tok is None or teacher_tok is None:
        return
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
        diff = sorted(set(s.items()) ^ set(t.items()))[:3]
        raise IncompatibleModels(f"teacher and student tokenizers differ ({len(s)} vs {len(t)} tokens; e.g. {diff}); "
                                 f"OPD needs one shared tokenizer")
    if _render(student_tok) != _render(teacher_tok):
        raise IncompatibleModels("teacher and student chat templates render the same conversation differently:\n"
                                 f"student: {_render(student_tok)!r}\nteacher: {_render(teacher_tok)!r}")


def shared_vocab(student_vocab: int, teacher_vocab: int, tokenizer, *, shapes_only: bool = False) -> int:
    """The vocabulary both heads are sliced to: equal tables as they are, padded tables to the real vocabulary.

    shapes_only (dry runs on presets, no tokenizer at hand): the smaller table stands in for the real vocabulary.
    """
    if student_vocab == teacher_vocab:
        if tokenizer is not None and len(tokenizer) > student_vocab:
            raise IncompatibleModels(f"the tokenizer {tokenizer.name_or_path} has {len(tokenizer)} tokens but the "
                                     f"models' embedding tables only {student_vocab} rows: its ids would fall "
                                     f"outside the vocabulary")
        return student_vocab
    if tokenizer is None and shapes_only:
        return min(student_vocab, teacher_vocab)
    if tokenizer is None:
        raise IncompatibleModels(f"student vocab {student_vocab} != teacher vocab {teacher_vocab} and no tokenizer "
                                 f"tells the real vocabulary; set data.tokenizer")
    real = len(tokenizer)
    if real > min(student_vocab, teacher_vocab):
        raise IncompatibleModels(f"the tokenizer {tokenizer.name_or_path} has {real} tokens but the embedding tables "
                                 f"have {student_vocab} (student) and {teacher_vocab} (teacher) rows: different real "
                                 f"vocabularies")
    return real


def _json_ids(path: Path, key: str) -> list[int]:
    if not path.is_file():
        return []
    value = json.loads(path.read_text()).get(key)
    return [] if value is None else [int(v) for v in np.atleast_1d(value)]


def stop_ids(folder: str | Path | None, tokenizer=None, config_eos=None) -> tuple[int, ...]:
    """The stop tokens of a model, the one policy for training rollouts, periodic and standalone evaluation.

    In this order, duplicates dropped: generation_config.json's eos_token_id (Qwen instruct models list two),
    config.json's, the tokenizer's eos token, then `config_eos` (the model config's, for models without a
    folder).
    """
    ids: list[int] = []
    if folder is not None:
        ids += _json_ids(Path(folder) / "generation_config.json", "eos_token_id")
        ids += _json_ids(Path(folder) / "config.json", "eos_token_id")
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if config_eos is not None:
        ids += [int(e) for e in np.atleast_1d(config_eos)]
    return tuple(dict.fromkeys(ids))
