"""generate rejects bad ids and settings with one-line errors that name the offender; DecodeSettings is the
decode loop's one static argument."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tipjax import models, sampling

VOCAB = 32
HF = {"architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32,
      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(scope="module")
def model():
    return models.init(models.ModelConfig.from_hf_dict(HF), jax.random.key(0))


IDS = np.array([[0, 4, 9], [3, 1, 2]], np.int32)
MASK = np.array([[0, 1, 1], [1, 1, 1]], np.int32)


def run(model, ids=IDS, **kwargs):
    return sampling.generate(model, ids, MASK, max_new_tokens=2, rng=jax.random.key(0), **kwargs)


def one_line_error(fn, match):
    with pytest.raises(ValueError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def test_ids_at_or_above_vocab_are_named(model):
    ids = IDS.copy()
    ids[1, 2] = VOCAB
    ids[0, 0] = 1000  # padding is embedded too, so it is checked too
    one_line_error(lambda: run(model, ids), r"prompt_ids holds 2 id\(s\) outside the vocabulary \[0, 32\): "
                                            r"1000 at \(0, 0\), 32 at \(1, 2\)")


def test_negative_ids_are_named(model):
    ids = IDS.copy()
    ids[0, 1] = -1
    one_line_error(lambda: run(model, jnp.asarray(ids)), r"outside the vocabulary \[0, 32\): -1 at \(0, 1\)")


def test_float_ids_are_rejected(model):
    one_line_error(lambda: run(model, IDS.astype(np.float32) + 0.5), r"prompt_ids must hold integer token ids, "
                                                                      r"got dtype float32 such as \[0.5, 4.5, 9.5\]")


def test_float_ids_are_rejected_inside_jit(model):
    """Inside an outer jit values are not readable, but the dtype still is."""
    with pytest.raises(ValueError, match="prompt_ids must hold integer token ids, got dtype float32") as err:
        jax.jit(lambda m, i: run(m, i).tokens)(model, IDS.astype(np.float32))
    assert "such as" not in str(err.value)


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -float("inf"), -0.5])
def test_non_finite_or_negative_temperature(model, temperature):
    one_line_error(lambda: run(model, temperature=temperature), "temperature must be finite and >= 0")


@pytest.mark.parametrize("eos, message", [(VOCAB, r"eos_token_id \[32\]"), ([5, -1], r"eos_token_id \[-1\]")])
def test_eos_outside_vocab(model, eos, message):
    one_line_error(lambda: run(model, eos_token_id=eos), message + r" outside the vocabulary \[0, 32\)")


def test_pad_outside_vocab(model):
    one_line_error(lambda: run(model, eos_token_id=3, pad_token_id=VOCAB + 1), r"pad_token_id \[33\]")


def test_valid_ids_at_the_vocab_edge_run(model):
    ids = IDS.copy()
    ids[:, -1] = VOCAB - 1
    out = run(model, ids, eos_token_id=VOCAB - 1, temperature=0.0)
    assert np.isfinite(np.asarray(out.logprobs)).all()


def test_decode_settings_is_the_static_key(model):
    settings = sampling.DecodeSettings(prompt_len=16, max_new_tokens=2, temperature=1.0, top_k=0, top_p=1.0,
                                       eos_ids=(3,), pad_id=3)
    assert hash(settings) == hash(dataclasses.replace(settings))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.top_k = 1
    before = sampling._jit_generate._cache_size()
    for temperature in (1.0, 1.0, 0.5):
        run(model, temperature=temperature, eos_token_id=3)
    assert sampling._jit_generate._cache_size() - before == 2  # one program per distinct settings
