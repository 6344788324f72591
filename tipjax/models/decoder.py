"""One decoder for Llama 3.x, Qwen2/Qwen2.5 and Qwen3; the families differ only by ModelConfig flags.

Shape alphabet (used in every einsum and docstring of tipjax.models):
  B batch              T query positions (tokens in this call)   S key positions (cache slots)
  D model width        N query heads       K key/value heads      G = N // K query heads per kv head
  H head dim           F MLP width         V vocabulary           L layers
  M = B * T flattened tokens (the dense projections run on [M, D])

The module only holds arrays (nnx.Param with logical `axes` metadata) and is used as a pytree: jit and grad
go over it directly. The L blocks are stacked on a leading `layers` axis and run with lax.scan in the
forward pass and prefill, so their compile time does not grow with depth. A decode step runs the layers
unrolled over per-layer cache buffers: a scan would slice the cache and the weights per layer and step, which
XLA:GPU materialises as copies, and its loop bookkeeping dominates a one-token step.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct

from tipjax.models import attention as attn
from tipjax.models import decode_kernel
from tipjax.models import layers as ops
from tipjax.models import sharding
from tipjax.models.cache import KVCache, LayerCache, to_cache
from tipjax.models.config import ModelConfig

_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots}


def param_specs(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Every parameter of the model: name -> (shape, logical axes). Names under `layers.` are stacked over L."""
    L, D, N, K, H = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    F, V = cfg.intermediate_size, cfg.vocab_size
    specs = {
        "embed": ((V, D), ("vocab", "embed")),
        "layers.attn_norm": ((L, D), ("layers", "norm")),
        "layers.wq": ((L, D, N, H), ("layers", "embed", "q_heads", "head_dim")),
        "layers.wk": ((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
        "layers.wv": ((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
        "layers.wo": ((L, N, H, D), ("layers", "q_heads", "head_dim", "embed")),
        "layers.mlp_norm": ((L, D), ("layers", "norm")),
        "layers.w_gate": ((L, D, F), ("layers", "embed", "mlp")),
        "layers.w_up": ((L, D, F), ("layers", "embed", "mlp")),
        "layers.w_down": ((L, F, D), ("layers", "mlp", "embed")),
        "final_norm": ((D,), ("norm",)),
    }
    if cfg.qkv_bias:
        specs["layers.bq"] = ((L, N, H), ("layers", "q_heads", "head_dim"))
        specs["layers.bk"] = ((L, K, H), ("layers", "kv_heads", "head_dim"))
        specs["layers.bv"] = ((L, K, H), ("layers", "kv_heads", "head_dim"))
    if cfg.qk_norm:
        specs["layers.q_norm"] = ((L, H), ("layers", "norm"))
        specs["layers.k_norm"] = ((L, H), ("layers", "norm"))
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ((D, V), ("embed", "vocab"))
    return specs


class Blocks(nnx.Module):
    """The L transformer blocks' parameters, each stacked on a leading `layers` axis (absent ones are None)."""

    def __init__(self, params: dict[str, nnx.Param]):
        self.attn_norm = params["attn_norm"]
        self.wq, self.wk, self.wv, self.wo = params["wq"], params["wk"], params["wv"], params["wo"]
        self.bq, self.bk, self.bv = params.get("bq"), params.get("bk"), params.get("bv")
        self.q_norm, self.k_norm = params.get("q_norm"), params.get("k_norm")
        self.mlp_norm = params["mlp_norm"]
        self.w_gate, self.w_up, self.w_down = params["w_gate"], params["w_up"], params["w_down"]


@struct.dataclass
class DecodeLayer:
    """One layer's weights for a decode step, with the projections that read the same input stacked so a
    one-token step launches one matmul for q/k/v and one for gate/up (a decode step is launch bound).

    wqkv [D, K, G + 2, H]: per kv head, its G query heads, then its key, then its value (grouped by kv head,
    so sharding kv heads over `tensor` keeps each group on one device); bqkv [K, G + 2, H] or None;
    qk_norm [G + 1, H] or None: q_norm for each of the G query heads, then k_norm, so one normalisation (and
    one rotation) covers a kv group's queries and key; w_gate_up [D, 2, F]. The rest as in Blocks, for one layer.
    """

    attn_norm: jax.Array
    wqkv: jax.Array
    bqkv: jax.Array | None
    qk_norm: jax.Array | None
    wo: jax.Array
    mlp_norm: jax.Array
    w_gate_up: jax.Array
    w_down: jax.Array

    @classmethod
    def from_blocks(cls, blocks: Blocks, i: int, cfg: ModelConfig) -> DecodeLayer:
        """Layer i of the stacked Blocks, in the compute dtype."""
        def get(p):
            return None if p is None else p[...][i].astype(cfg.compute_dtype)

        k, g, h = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim

        def stack_qkv(q, k_, v, lead):  # q [*lead, N, H], k_/v [*lead, K, H] -> [*lead, K, G + 2, H]
            q = q.reshape(*lead, k, g, h)
            return jnp.concatenate([q, k_[..., None, :], v[..., None, :]], axis=-2)

        d = cfg.hidden_size
        bqkv = None if blocks.bq is None else stack_qkv(get(blocks.bq), get(blocks.bk), get(blocks.bv), ())
        qk_norm = None
        if blocks.q_norm is not None:
            qk_norm = jnp.concatenate([jnp.broadcast_to(get(blocks.q_norm), (g, h)), get(blocks.k_norm)[None]])
        return cls(attn_norm=get(blocks.attn_norm),
                   wqkv=stack_qkv(get(blocks.wq), get(blocks.wk), get(blocks.wv), (d,)), bqkv=bqkv,
                   qk_norm=qk_norm, wo=get(blocks.wo),
                   mlp_norm=get(blocks.mlp_norm), w_gate_up=jnp.stack([get(blocks.w_gate), get(blocks.w_up)], 1),
                   w_down=get(blocks.w_down))


class Decoder(nnx.Module):
    """Causal decoder. Build with models.init / models.load_hf, or Decoder(config, {name: array}) (see param_specs)."""

    def __init__(self, config: ModelConfig, arrays: dict[str, jax.Array]):
        specs = param_specs(config)
        if set(arrays) != set(specs):
            raise ValueError(f"parameters do not match the config: missing {sorted(set(specs) - set(arrays))}, "
                             f"unexpected {sorted(set(arrays) - set(specs))}")
        params = {name: nnx.Param(arrays[name], axes=axes) for name, (_, axes) in specs.items()}
        self.config = config
        self.embed = params["embed"]
        self.blocks = Blocks({n.removeprefix("layers."): p for n, p in params.items() if n.startswith("layers.")})
        self.final_norm = params["final_norm"]
        self.lm_head = params.get("lm_head")

    # -- public forward API -------------------------------------------------------------------------------

    def __call__(self, input_ids: jax.Array, *, positions: jax.Array | None = None,
                 attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids [B, T] int -> logits [B, T, V] float32."""
        return self.logits(self.hidden(input_ids, positions=positions, attention_mask=attention_mask))

    def hidden(self, input_ids: jax.Array, *, positions: jax.Array | None = None,
               attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids [B, T] -> final-normed hidden states [B, T, D] in the compute dtype.

        positions [B, T] (default arange); attention_mask [B, T], 1 = real token, masks padded keys.
        """
        b, t = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        kv_valid = None if attention_mask is None else attention_mask.astype(jnp.bool_)
        mask = attn.AttentionMask(kv_valid=kv_valid)

        def step(x, blk):
            x, _ = self._block(blk, x, positions, mask=mask)
            return x, None

        x, _ = jax.lax.scan(self._remat(step), self._embed(input_ids), self.blocks)
        return self._final_norm(x)

    def hidden_prefixed(self, prompt_ids: jax.Array, prompt_mask: jax.Array, input_ids: jax.Array,
                        attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Rows that continue shared prompts, each prompt's tokens run once: prompt_ids, prompt_mask [P, Tp] (left
        padded) and the rows' tokens input_ids, attention_mask [B, T], row b continuing prompt b // n (B = P * n).
        -> (final-normed hidden states of the prompts [P, Tp, D], of the rows [B, T, D]): those that hidden() gives
        for prompt b // n followed by row b, with the prompt part computed for P sequences instead of B.
        """
        p, b = prompt_ids.shape[0], input_ids.shape[0]
        if b % p:
            raise ValueError(f"hidden_prefixed: {b} rows are not a multiple of {p} prompts")
        prompt_valid = prompt_mask.astype(jnp.bool_)
        row_valid = attention_mask.astype(jnp.bool_)
        prompt_pos = ops.positions_from_mask(prompt_valid)
        # The rows' positions continue their prompt's real-token count, as over the whole prompt-then-row sequence.
        prompt_len = jnp.repeat(jnp.sum(prompt_valid, axis=1, dtype=jnp.int32), b // p)[:, None]
        row_pos = jnp.maximum(prompt_len + jnp.cumsum(row_valid, axis=1, dtype=jnp.int32) - 1, 0)
        prompt_attn = attn.AttentionMask(kv_valid=prompt_valid)
        row_attn = attn.AttentionMask(kv_valid=row_valid)

        def step(carry, blk):
            x_prompt, x_rows = carry
            x_prompt, (k, v) = self._block(blk, x_prompt, prompt_pos, mask=prompt_attn)
            x_rows, _ = self._block(blk, x_rows, row_pos, mask=row_attn, prefix=(k, v, prompt_valid))
            return (x_prompt, x_rows), None

        (x_prompt, x_rows), _ = jax.lax.scan(self._remat(step), (self._embed(prompt_ids), self._embed(input_ids)),
                                             self.blocks)
        return self._final_norm(x_prompt), self._final_norm(x_rows)

    def hidden_cached(self, tokens: jax.Array, positions: jax.Array, cache: KVCache,
                      token_mask: jax.Array, *, fresh: bool = False, starts: jax.Array | None = None,
                      layers: Sequence[DecodeLayer] | None = None) -> tuple[jax.Array, KVCache]:
        """Runs T new tokens [B, T] at positions [B, T] against the cache -> (hidden [B, T, D], new cache).

        Their keys/values go to slots [cache.index, cache.index + T) with cache.mask there = token_mask [B, T];
        query j (slot index + j) sees slot s iff the new mask has s and s <= index + j. The same call serves
        prefill (T = prompt length) and decode (T = 1); index may be traced.

        fresh=True promises an empty cache (index 0): the layers then run as one scan, attending over the T
        new keys only ([T, T] scores, not [T, S]), and write their keys into the cache afterwards.
        Otherwise the layers run unrolled, each on its own cache buffer (no per-step copies), with the
        per-layer weights `layers` (default: self.decode_layers() here; a decode loop makes them once outside).
        xla attention reads every slot of the cache (size it with init_cache / KVCache.grow); starts [B]: see
        LayerCache.starts (lets a decode kernel read only the filled slots). A cache with a shared prompt
        (KVCache.prompt) is read after it; a fresh one must not have one.
        """
        t = tokens.shape[1]
        index = cache.index
        kv_mask = jax.lax.dynamic_update_slice(cache.mask, token_mask.astype(jnp.bool_), (0, index))
        x = self._embed(tokens)
        if fresh:
            if cache.prompt is not None:
                raise ValueError("hidden_cached(fresh=True) cannot read a shared prompt: prefill the prompts themselves")
            mask = attn.AttentionMask(kv_valid=token_mask.astype(jnp.bool_))

            def step(x, blk):
                return self._block(blk, x, positions, mask=mask)

            x, (ks, vs) = jax.lax.scan(self._remat(step), x, self.blocks)
            write = lambda buf, new: jax.lax.dynamic_update_slice(buf, to_cache(new.swapaxes(1, 2), buf.dtype),
                                                                   (0, 0, 0, 0))
            k = tuple(write(cache.k[i], ks[i]) for i in range(len(cache.k)))
            v = tuple(write(cache.v[i], vs[i]) for i in range(len(cache.v)))
            return self._final_norm(x), KVCache(k=k, v=v, mask=kv_mask, index=index + t)
        layers = self.decode_layers() if layers is None else layers
        k, v = [], []
        for i, blk in enumerate(layers):
            view = LayerCache(k=cache.k[i], v=cache.v[i], mask=kv_mask, index=index, starts=starts,
                              prompt=None if cache.prompt is None else cache.prompt.layer(i))
            x, (k_i, v_i) = self._block(blk, x, positions, cache=view)
            k.append(k_i)
            v.append(v_i)
        return self._final_norm(x), KVCache(k=tuple(k), v=tuple(v), mask=kv_mask, index=index + t,
                                            prompt=cache.prompt)

    def decode_layers(self) -> tuple[DecodeLayer, ...]:
        """The L layers' weights for decode steps (sliced from the stack, projections stacked; a copy)."""
        return tuple(DecodeLayer.from_blocks(self.blocks, i, self.config) for i in range(self.config.num_layers))

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache for `batch` rows and `max_len` slots (dtype defaults to the compute dtype)."""
        cfg = self.config
        return KVCache.zeros(cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim,
                             dtype or cfg.compute_dtype)

    def head(self) -> jax.Array:
        """The lm_head weight [D, V] in the param dtype (the embedding transposed when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, h: jax.Array) -> jax.Array:
        """h [..., D] -> logits [..., V] float32 (fp32 accumulation whatever the compute dtype)."""
        return ops.logits(h, self.head())

    # -- internals ------------------------------------------------------------------------------------------

    def _embed(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], ids, axis=0).astype(self.config.compute_dtype)

    def _final_norm(self, x: jax.Array) -> jax.Array:
        return ops.rms_norm(x, self.final_norm[...], self.config.rms_norm_eps)

    def _remat(self, step):
        if self.config.remat == "none":
            return step
        return jax.checkpoint(step, policy=_REMAT_POLICIES[self.config.remat], prevent_cse=False)

    def _block(self, blk: Blocks | DecodeLayer, x: jax.Array, positions: jax.Array, *,
               mask: attn.AttentionMask | None = None, cache: LayerCache | None = None,
               prefix: tuple[jax.Array, jax.Array, jax.Array] | None = None,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One transformer block on x [B, T, D] -> (x, (k, v)).

        Without a cache, attention runs over this call's T keys under `mask` and (k, v) are those keys
        [B, T, K, H]; prefix (k, v [P, Tp, K, H], valid [P, Tp]) puts shared prompts' keys before them
        (attention.prefixed_attention; mask.kv_valid then masks the rows' own keys). With a cache,
        attention.cached_attention writes them and derives the mask from the cache; (k, v) is then the layer's
        updated cache [B, K, S, H].
        """
        cfg = self.config

        def w(p):
            return p[...].astype(cfg.compute_dtype)

        with jax.named_scope("attn_norm"):
            h = ops.rms_norm(x, w(blk.attn_norm), cfg.rms_norm_eps)
        b, t = h.shape[:2]
        inv_freq = ops.rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        fused = isinstance(blk, DecodeLayer) and self._decode_kernel(cache, t)  # the Pallas decode kernel
        if fused:
            out, kv = self._decode_attend(blk, h, positions, inv_freq, cache)
        elif isinstance(blk, DecodeLayer):
            q, k, v = self._decode_qkv(blk, h, positions, inv_freq)
        else:
            with jax.named_scope("qkv"):
                h2 = ops.flat_tokens(h)  # M = B * T tokens (see ops.flat_tokens)
                q = jnp.einsum("MD,DNH->MNH", h2, w(blk.wq)).reshape(b, t, cfg.num_heads, cfg.head_dim)
                k = jnp.einsum("MD,DKH->MKH", h2, w(blk.wk)).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
                v = jnp.einsum("MD,DKH->MKH", h2, w(blk.wv)).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
                if cfg.qkv_bias:
                    q, k, v = q + w(blk.bq), k + w(blk.bk), v + w(blk.bv)
                if cfg.qk_norm:
                    q = ops.rms_norm(q, w(blk.q_norm), cfg.rms_norm_eps)
                    k = ops.rms_norm(k, w(blk.k_norm), cfg.rms_norm_eps)
            with jax.named_scope("rope"):
                q = ops.rope(q, positions, inv_freq)
                k = ops.rope(k, positions, inv_freq)
        if not fused:
            with jax.named_scope("attention"):
                settings = dict(backend=cfg.attention, query_chunk=cfg.query_chunk)
                if prefix is not None:
                    out, kv = attn.prefixed_attention(q, k, v, mask.kv_valid, *prefix, **settings), (k, v)
                elif cache is None:
                    out, kv = attn.attention(q, k, v, mask, **settings), (k, v)
                else:
                    out, kv = attn.cached_attention(q, k, v, cache, decode_backend=cfg.decode_attention,
                                                    **settings)
        with jax.named_scope("out_proj"):
            x = x + jnp.einsum("MNH,NHD->MD", ops.flat_tokens(out), w(blk.wo)).reshape(x.shape)
        with jax.named_scope("mlp"):
            h = ops.rms_norm(x, w(blk.mlp_norm), cfg.rms_norm_eps)
            if isinstance(blk, DecodeLayer):
                x = x + ops.swiglu_fused(h, w(blk.w_gate_up), w(blk.w_down))
            else:
                x = x + ops.swiglu(h, w(blk.w_gate), w(blk.w_up), w(blk.w_down))
        return x, kv

    def _decode_kernel(self, cache: LayerCache | None, t: int) -> bool:
        """Whether this cache read runs the Pallas decode kernel (decode_kernel.py), norm and rope included."""
        cfg = self.config
        if cache is None or cache.fresh:
            return False
        return attn.model_decode_backend(cfg, t=t, s=cache.k.shape[2], contiguous=cache.starts is not None,
                                         cache_dtype=cache.k.dtype, prompt_slots=attn.prompt_slots(cache)) == "pallas"

    def _stacked_qkv(self, blk: DecodeLayer, h: jax.Array) -> jax.Array:
        """h [B, T, D] -> [M = B * T, K, G + 2, H]: per kv head its G queries, its key and its value."""
        cfg = self.config
        with jax.named_scope("qkv"):
            qkv = jnp.einsum("MD,DKEH->MKEH", ops.flat_tokens(h), blk.wqkv.astype(cfg.compute_dtype))
            return qkv + blk.bqkv.astype(cfg.compute_dtype) if cfg.qkv_bias else qkv

    def _decode_attend(self, blk: DecodeLayer, h, positions, inv_freq, cache: LayerCache):
        """One token per row through the Pallas decode kernel: q/k norm, rope, cache write and attention in one
        launch from the stacked q/k/v matmul. Returns (out [B, 1, N, H], (k_layer, v_layer))."""
        cfg = self.config
        b = h.shape[0]
        qkv = self._stacked_qkv(blk, h)
        with jax.named_scope("attention"):
            out, k_layer, v_layer = decode_kernel.attend(
                qkv, cache.k, cache.v, cache.starts, cache.index, rope=ops.rope_cos_sin(positions[:, 0], inv_freq),
                qk_norm=blk.qk_norm if cfg.qk_norm else None, eps=cfg.rms_norm_eps, prompt=cache.prompt)
        return out.reshape(b, 1, cfg.num_heads, cfg.head_dim), (k_layer, v_layer)

    def _decode_qkv(self, blk: DecodeLayer, h: jax.Array, positions: jax.Array, inv_freq) -> tuple[jax.Array, ...]:
        """q [B, T, N, H], k and v [B, T, K, H] from one stacked matmul (see split_qkv)."""
        cfg = self.config
        qk_norm = blk.qk_norm.astype(cfg.compute_dtype) if cfg.qk_norm else None
        return split_qkv(self._stacked_qkv(blk, h), positions, inv_freq, qk_norm=qk_norm, eps=cfg.rms_norm_eps)


def split_qkv(qkv: jax.Array, positions: jax.Array, inv_freq, *, qk_norm: jax.Array | None, eps: float):
    """The xla decode path's q/k norm and rope on the stacked q/k/v output [M = B * T, K, G + 2, H] for
    positions [B, T] -> q [B, T, N, H], k and v [B, T, K, H]. Each kv group's G queries and its key are
    normalised (qk_norm [G + 1, H], DecodeLayer's) and rotated as one [.., G + 1, H] block: fewer, larger kernels
    in a launch-bound step. decode_kernel.attend does the same in its one launch."""
    b, t = positions.shape
    kv, e, hd = qkv.shape[1:]
    g = e - 2
    with jax.named_scope("qkv"):
        qk, v = qkv[:, :, :g + 1], qkv[:, :, g + 1]
        if qk_norm is not None:
            qk = ops.rms_norm(qk, qk_norm, eps)
    with jax.named_scope("rope"):
        qk = ops.rope(qk.reshape(b, t, kv * (g + 1), hd), positions, inv_freq).reshape(b, t, kv, g + 1, hd)
    return qk[:, :, :, :g].reshape(b, t, kv * g, hd), qk[:, :, :, g], v.reshape(b, t, kv, hd)


def _random_arrays(cfg: ModelConfig, rng: jax.Array) -> dict[str, jax.Array]:
    """HF-style init: matrices ~ normal(0, initializer_range), norm weights 1, biases 0."""
    # XLA's RngBitGenerator compiles several times faster than threefry for many parameters.
    key = jax.random.key(jax.random.bits(rng, (), jnp.uint32), impl="rbg")
    arrays = {}
    for i, (name, (shape, axes)) in enumerate(sorted(param_specs(cfg).items())):
        if axes[-1] == "norm":
            arrays[name] = jnp.ones(shape, cfg.param_dtype)
        elif name.startswith("layers.b"):
            arrays[name] = jnp.zeros(shape, cfg.param_dtype)
        else:
            noise = jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
            arrays[name] = (noise * cfg.initializer_range).astype(cfg.param_dtype)
    return arrays


def abstract(cfg: ModelConfig, *, mesh=None, rules=sharding.STORAGE_RULES) -> Decoder:
    """The Decoder with jax.ShapeDtypeStruct leaves: parameter shapes/dtypes/axes without memory.

    With a mesh every leaf also carries its NamedSharding under `rules` (an AOT-compile or restore target).
    """
    def build(key):
        return Decoder(cfg, _random_arrays(cfg, key))

    shapes = jax.eval_shape(build, jax.random.key(0))
    if mesh is None:
        return shapes
    return jax.tree.map(_with_sharding, shapes, sharding.model_shardings(shapes, mesh, rules))


def _with_sharding(x: jax.ShapeDtypeStruct, s: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)


def init(cfg: ModelConfig, rng: jax.Array, *, mesh=None, rules=sharding.STORAGE_RULES) -> Decoder:
    """A randomly initialised Decoder; with a mesh each parameter is created directly in its sharding."""
    return _init_fn(cfg, mesh, tuple(dict(rules).items()))(rng)


@functools.lru_cache(maxsize=32)
def _init_fn(cfg: ModelConfig, mesh, rules):
    """One compiled initialiser per (config, mesh, rules), so repeated inits do not recompile."""
    out = None if mesh is None else sharding.model_shardings(abstract(cfg), mesh, rules)

    def build(key):
        return Decoder(cfg, _random_arrays(cfg, key))

    return jax.jit(build, out_shardings=out)


def param_count(model: Decoder) -> int:
    """Number of parameters of a Decoder or of models.abstract(cfg)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(model))
