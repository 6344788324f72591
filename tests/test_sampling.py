"""Sampler: greedy parity with transformers, EOS handling, exact sampling distributions, jit, mesh."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import torch
import transformers
from scipy import stats as sstats

from tipjax import models, sampling

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 24}),
}


def tiny_hf(tmp_path, family, vocab=211, seed=0, sharpen=20.0, **extra):
    config_cls, model_cls, defaults = FAMILIES[family]
    config = config_cls(**{**dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  tie_word_embeddings=False), **defaults, **extra})
    torch.manual_seed(seed)
    hf = model_cls(config).eval()
    # Sharper logits than the default init so greedy decoding has clear winners.
    with torch.no_grad():
        hf.lm_head.weight.mul_(sharpen)
    path = tmp_path / family
    hf.save_pretrained(path)
    return hf, path


def left_padded(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


PROMPTS = [[5, 17, 33, 2, 90, 41, 7], [12, 8], [100, 3, 66, 66, 21], [9]]


@pytest.mark.parametrize("family, segments, decode", [
    ("llama", None, "auto"), ("qwen2", None, "auto"), ("qwen3", None, "auto"), ("qwen3", 5, "auto"),
    ("qwen3", None, "pallas"), ("qwen2", None, "pallas")])  # the Pallas decode kernel (interpret mode)
def test_greedy_matches_transformers(tmp_path, family, segments, decode):
    # The kernel takes power-of-two head dims >= 32: Qwen3's tiny 24 becomes 32 there, Qwen2's 64 / 4 = 16 too.
    wider = {"qwen3": {"head_dim": 32}, "qwen2": {"hidden_size": 128}}
    hf, path = tiny_hf(tmp_path, family, **(wider[family] if decode == "pallas" else {}))
    model = models.load_hf(path, dtype=jnp.float32, decode_attention=decode)
    ids, mask = left_padded(PROMPTS)
    eos, new = 7, 24
    out = sampling.generate(model, ids, mask, max_new_tokens=new, temperature=0.0, eos_token_id=eos,
                            rng=jax.random.key(0), segments=segments)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                          max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=eos).numpy()
    tokens = np.asarray(out.tokens)
    resp = np.asarray(out.response_mask)
    tp = ids.shape[1]
    for b in range(len(PROMPTS)):
        n = int(resp[b].sum())
        ours = tokens[b, tp:tp + n]
        theirs = ref[b, tp:]
        hits = np.flatnonzero(theirs == eos)
        theirs = theirs[:hits[0] + 1] if hits.size else theirs
        np.testing.assert_array_equal(ours, theirs, err_msg=f"row {b}")
        assert resp[b, tp:tp + n].all() and not resp[b, tp + n:].any()


def test_segment_ends_cover_every_step_once():
    assert sampling.segment_ends(24, 5) == (5, 10, 15, 20, 24)
    assert sampling.segment_ends(100) == (100,)
    assert sampling.segment_ends(8192) == (2048, 4096, 6144, 8192)
    assert sampling.segment_ends(3, 10) == (1, 2, 3)


def test_eos_masks_and_multiple_eos(tmp_path):
    _, path = tiny_hf(tmp_path, "qwen3", vocab=12)
    model = models.load_hf(path, dtype=jnp.float32)
    ids, mask = left_padded([[1, 2, 4], [6]] * 8)
    eos = (3, 5)
    new = 12
    out = sampling.generate(model, ids, mask, max_new_tokens=new, temperature=1.0, eos_token_id=list(eos),
                            rng=jax.random.key(3), pad_token_id=0)
    tokens, resp = np.asarray(out.tokens), np.asarray(out.response_mask)
    tp = ids.shape[1]
    np.testing.assert_array_equal(tokens[:, :tp], ids)
    assert not resp[:, :tp].any()
    saw_eos = 0
    for b in range(tokens.shape[0]):
        gen = tokens[b, tp:]
        hits = np.flatnonzero(np.isin(gen, eos))
        end = hits[0] + 1 if hits.size else new
        saw_eos += bool(hits.size)
        np.testing.assert_array_equal(resp[b, tp:], (np.arange(new) < end).astype(np.int32))
        assert (gen[end:] == 0).all()
        assert int(out.lengths[b]) == end
        assert bool(out.truncated[b]) == (hits.size == 0)
        logp = np.asarray(out.logprobs)[b, tp:]
        assert (logp[:end] < 0).all() and (logp[end:] == 0).all()
    assert saw_eos >= 8, "the test needs rows that end at an EOS"


def test_logprobs_are_the_models_log_softmax(tmp_path):
    _, path = tiny_hf(tmp_path, "llama", vocab=50)
    model = models.load_hf(path, dtype=jnp.float32)
    ids, mask = left_padded([[4, 9, 1, 30]])
    out = sampling.generate(model, ids, mask, max_new_tokens=6, rng=jax.random.key(1))
    full = np.asarray(out.tokens)
    logits = np.asarray(model(jnp.asarray(full)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = logp[0, 3:-1][np.arange(6), full[0, 4:]]
    np.testing.assert_allclose(np.asarray(out.logprobs)[0, 4:], expected, rtol=1e-4, atol=1e-5)


def reference_distribution(logits, temperature, top_k, top_p):
    """numpy restatement of the documented semantics."""
    z = np.asarray(logits, np.float64) / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[::-1][top_k - 1], z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        keep = np.zeros_like(p, bool)
        keep[order[before < top_p]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.6), (0.7, 5, 0.8)])
def test_sampling_distributions_chi_square(temperature, top_k, top_p):
    logits = jnp.asarray([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0])
    draws = 40000
    sample = jax.jit(jax.vmap(lambda k: sampling.sample_logits(
        k, logits[None], temperature=temperature, top_k=top_k, top_p=top_p)[0]))
    tokens = np.asarray(sample(jax.random.split(jax.random.key(7), draws)))
    expected = reference_distribution(logits, temperature, top_k, top_p)
    counts = np.bincount(tokens, minlength=logits.size)
    assert (counts[expected == 0] == 0).all(), "sampled a token the rule excludes"
    support = expected > 0
    _, pvalue = sstats.chisquare(counts[support], draws * expected[support])
    assert pvalue > 1e-3, (counts, draws * expected)


def test_sampling_detects_wrong_temperature():
    """The chi-square test above has power: samples at T=1 are rejected as draws from T=1.2."""
    logits = jnp.asarray([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0])
    keys = jax.random.split(jax.random.key(7), 40000)
    tokens = np.asarray(jax.vmap(lambda k: sampling.sample_logits(
        k, logits[None], temperature=1.0, top_k=0, top_p=1.0)[0])(keys))
    _, pvalue = sstats.chisquare(np.bincount(tokens, minlength=8), 40000 * reference_distribution(logits, 1.2, 0, 1.0))
    assert pvalue < 1e-6


def test_first_token_distribution_through_generate(tmp_path):
    _, path = tiny_hf(tmp_path, "qwen2", vocab=10, sharpen=3.0)
    model = models.load_hf(path, dtype=jnp.float32)
    ids, mask = left_padded([[1, 2, 3]])
    draws = 6000
    out = sampling.generate(model, ids, mask, max_new_tokens=1, temperature=0.8, top_k=6, top_p=0.9,
                            rng=jax.random.key(11), num_samples=draws)
    first = np.asarray(out.tokens)[:, 3]
    logits = np.asarray(model(jnp.asarray(ids)))[0, -1]
    expected = reference_distribution(logits, 0.8, 6, 0.9)
    counts = np.bincount(first, minlength=10)
    assert 3 <= (expected > 0).sum() < 10, expected  # top-k and top-p both cut something
    assert (counts[expected == 0] == 0).all()
    support = expected > 0
    _, pvalue = sstats.chisquare(counts[support], draws * expected[support])
    assert pvalue > 1e-3


def test_deterministic_and_outer_jit(tmp_path):
    _, path = tiny_hf(tmp_path, "qwen3", vocab=128)  # PROMPTS hold ids up to 100
    model = models.load_hf(path, dtype=jnp.float32)
    ids, mask = left_padded(PROMPTS)
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=20, eos_token_id=5)
    a = sampling.generate(model, ids, mask, rng=jax.random.key(4), **kwargs)
    b = sampling.generate(model, ids, mask, rng=jax.random.key(4), **kwargs)
    c = sampling.generate(model, ids, mask, rng=jax.random.key(5), **kwargs)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)

    @jax.jit
    def inside(m, i, msk, key):
        return sampling.generate(m, i, msk, rng=key, buckets=(ids.shape[1],), **kwargs)

    d = inside(model, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(4))
    np.testing.assert_array_equal(a.tokens, d.tokens)
    np.testing.assert_array_equal(a.response_mask, d.response_mask)


def test_bucketed_compiles_are_bounded(tmp_path):
    _, path = tiny_hf(tmp_path, "llama", vocab=64)
    model = models.load_hf(path, dtype=jnp.float32)
    before = sampling._jit_generate._cache_size()
    for rows in ([[1, 2]], [[1, 2, 3]], [[4, 5, 6, 7, 8]], [[9] * 11]):  # all inside the 16 bucket
        ids, mask = left_padded(rows)
        sampling.generate(model, ids, mask, max_new_tokens=3, rng=jax.random.key(0))
    assert sampling._jit_generate._cache_size() - before == 1


@pytest.mark.parametrize("decode", ["auto", "pallas"])  # pallas: the kernel under shard_map (the mesh context)
def test_sharded_mesh_equals_single_device(tmp_path, decode):
    _, path = tiny_hf(tmp_path, "qwen3", vocab=128, head_dim=32)  # PROMPTS hold ids up to 100
    single = models.load_hf(path, dtype=jnp.float32)
    mesh = models.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = models.load_hf(path, dtype=jnp.float32, mesh=mesh, rules=models.SAMPLING_RULES,
                             decode_attention=decode)
    ids, mask = left_padded(PROMPTS * 2)
    kwargs = dict(max_new_tokens=8, temperature=0.0, eos_token_id=5, rng=jax.random.key(0))
    a = sampling.generate(single, ids, mask, **kwargs)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with jax.set_mesh(mesh):
        b = sampling.generate(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch), **kwargs)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.response_mask, b.response_mask)


def test_bad_input(tmp_path):
    _, path = tiny_hf(tmp_path, "llama", vocab=32)
    model = models.load_hf(path, dtype=jnp.float32)
    ids, mask = left_padded([[1, 2, 3]])
    with pytest.raises(ValueError, match="largest bucket"):
        sampling.generate(model, ids, mask, max_new_tokens=2, rng=jax.random.key(0), buckets=(2,))
    with pytest.raises(ValueError, match="empty"):
        sampling.generate(model, np.zeros((2, 3), np.int32), np.array([[0, 1, 1], [0, 0, 0]]),
                          max_new_tokens=2, rng=jax.random.key(0))
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_new_tokens"):
            sampling.generate(model, ids, mask, max_new_tokens=bad, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="top_p"):
        sampling.generate(model, ids, mask, max_new_tokens=2, top_p=0.0, rng=jax.random.key(0))
