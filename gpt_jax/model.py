"""The GPT decoder: one Flax Linen module for both the GPT-2 and the Llama families.

`GPT(config).apply({'params': params}, tokens)` -> logits [B, T, V] is a pure function.

One `GPTConfig` selects the family:
- "gpt2":  learned positions, LayerNorm (with bias), GELU (tanh) MLP, biases everywhere, tied
           input/output embeddings. Matches HF `GPT2LMHeadModel`.
- "llama": RoPE, RMSNorm, SwiGLU MLP, grouped-query attention (n_kv_heads <= n_heads), no biases,
           untied output head. Matches HF `LlamaForCausalLM`.

Design choices:
- Layers run under `nn.scan` (one compiled layer, params stacked on a leading `layers` axis) unless
  `scan_layers=False`; `remat_policy` wraps the layer in `nn.remat` to trade FLOPs for memory.
- Parameters live in `param_dtype` (float32); matmuls run in `dtype` (bfloat16 on accelerators);
  softmax and logits are float32.
- Every parameter carries logical axis names (see `sharding.RULES`); activations are constrained by
  name when the module is given a mesh.
- One forward path for training and decoding: `embed` and `lm_logits` (pure functions of the
  params) and the `Norm`/`Block` modules are what `GPT.__call__` runs and what `sampling` runs,
  layer by layer, with its KV cache (`Attention` writes a layer's cache when given one).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from gpt_jax.lora_batch import lora_update
from gpt_jax.sharding import constrain

FAMILIES = ("gpt2", "llama")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    family: str = "gpt2"
    vocab_size: int = 8192
    max_seq_len: int = 256
    n_layers: int = 6
    d_model: int = 384
    n_heads: int = 6
    n_kv_heads: int = 0  # 0 = n_heads (multi-head attention)
    d_ff: int = 0  # 0 = 4 * d_model (gpt2) or the Llama 2/3 * 4d rounded rule
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: int = -1  # -1 = family default (gpt2 tied, llama untied), 0/1 explicit
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    init_std: float = 0.02
    # "auto": on a GPU, plain causal windows (no packed segments, no cache) use the fused
    # jax.nn.dot_product_attention (cuDNN flash attention in bf16), elsewhere `attend` (einsum +
    # float32 softmax); "xla": always `attend`; "fused": the fused call wherever it applies, CPU too.
    attention: str = "auto"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"model.family={self.family!r}; expected one of {FAMILIES}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"model.n_heads={self.n_heads} not divisible by n_kv_heads={self.kv_heads}")
        if self.attention not in ("auto", "xla", "fused"):
            raise ValueError(f"model.attention={self.attention!r}; expected auto, xla or fused")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy={self.remat_policy!r}; expected {list(REMAT_POLICIES)}")

    @classmethod
    def from_config(cls, cfg) -> "GPTConfig":
        """From an ml_collections ConfigDict (or dict) holding exactly these fields."""
        values = dict(cfg) if not hasattr(cfg, "to_dict") else cfg.to_dict()
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise KeyError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**values)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.family == "gpt2":
            return 4 * self.d_model
        hidden = int(2 * 4 * self.d_model / 3)
        return 64 * ((hidden + 63) // 64)

    @property
    def tied(self) -> bool:
        return self.family == "gpt2" if self.tie_embeddings < 0 else bool(self.tie_embeddings)

    @property
    def use_bias(self) -> bool:
        return self.family == "gpt2"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)

    def num_params(self, include_pos: bool = True) -> int:
        """Exact parameter count (matches the initialised pytree)."""
        d, h, kv, hd, f = self.d_model, self.n_heads, self.kv_heads, self.head_dim, self.ff_dim
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        mlp = (2 if self.family == "gpt2" else 3) * d * f
        norms = 2 * d * (2 if self.family == "gpt2" else 1)
        biases = (h * hd + 2 * kv * hd + d + f + d) if self.use_bias else 0
        layer = attn + mlp + norms + biases
        total = self.n_layers * layer + self.vocab_size * d + d * (2 if self.family == "gpt2" else 1)
        if not self.tied:
            total += d * self.vocab_size
        if self.family == "gpt2" and include_pos:
            total += self.max_seq_len * d
        return total


def _init(std: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros, names)


def _ones(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones, names)


class Norm(nn.Module):
    """LayerNorm (gpt2) or RMSNorm (llama), computed in float32."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        scale = self.param("scale", _ones(("norm",)), (cfg.d_model,), cfg.weight_dtype)
        if self.has_variable("lora", "scale"):  # each row's adapter delta [B, D] (lora_batch)
            scale = scale + self.get_variable("lora", "scale")[:, None, :]
        xf = x.astype(jnp.float32)
        if cfg.family == "gpt2":
            bias = self.param("bias", _zeros(("norm",)), (cfg.d_model,), cfg.weight_dtype)
            if self.has_variable("lora", "bias"):
                bias = bias + self.get_variable("lora", "bias")[:, None, :]
            mean = xf.mean(-1, keepdims=True)
            var = jnp.square(xf - mean).mean(-1, keepdims=True)
            y = (xf - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale + bias
        else:
            y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + cfg.norm_eps) * scale
        return y.astype(cfg.compute_dtype)


def rotary(x, positions, theta: float):
    """RoPE in the HF "rotate_half" convention. x [B, T, N, D], positions [B, T]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1]))
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, half]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free


def _masked_softmax(scores, mask, head_dim: int):
    """Raw q.k scores [B, K, G, T, S] (float32), mask [B, T, S] -> attention probabilities."""
    bias = jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None, None, :, :]
    return jax.nn.softmax(scores * (head_dim**-0.5) + bias, axis=-1)


def attend(q, k, v, mask):
    """Grouped-query attention. q [B,T,H,D], k/v [B,K,S,D] (heads-major), mask [B,T,S] -> [B,T,H,D].

    Heads-major k/v make both matmuls plain batched GEMMs (about 2x faster on XLA:CPU than
    token-major operands). The mask enters as an additive float bias, which fuses into the
    softmax (a boolean select over [B,H,T,S] costs several times more on CPU).
    """
    b, t, h, d = q.shape
    kv = k.shape[1]
    q = q.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    probs = _masked_softmax(scores, mask, d).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def attend_slots_minor(q, k, v, mask):
    """`attend` with k/v [K, D, S] (batch 1, slots minor): the layout of `sampling`'s batch-1 cache.

    At batch 1 XLA:CPU drops the unit batch dim and wants both attention dots in canonical form
    (contracting dim of the cache minor for q.k, slots minor for p.v): a [K, S, D] cache is
    transposed, K and V of every layer, at every decode step. At batch > 1 the dots take
    [B, K, S, D] as it is, and slots-minor writes (one float per (head, dim) row) cost more.
    """
    t, h, d, s = q.shape[1], q.shape[2], q.shape[3], k.shape[-1]
    kv = k.shape[0]
    q = q[0].reshape(t, kv, h // kv, d).transpose(1, 2, 0, 3).reshape(kv, h // kv * t, d)
    scores = jnp.einsum("kmd,kds->kms", q, k, preferred_element_type=jnp.float32)
    probs = _masked_softmax(scores.reshape(1, kv, h // kv, t, s), mask, d)
    probs = probs.astype(v.dtype).reshape(kv, h // kv * t, s)
    out = jnp.einsum("kms,kds->kmd", probs, v).reshape(kv, h // kv, t, d)
    return out.transpose(2, 0, 1, 3).reshape(1, t, h, d)


def write_cache(cache, new, index):
    """new keys/values [B, T, K, D] -> cache slots [index, index + T), in place. The cache is
    [B, K, S, D], or [K, D, S] at batch 1 (see `attend_slots_minor`). `index` is a scalar, or [B]
    (one write position per row: the serving engine's decode slots, `gpt_jax.serve.slots`)."""
    new = new.astype(cache.dtype)
    if jnp.ndim(index) == 1:
        return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (0, i, 0)))(
            cache, new.transpose(0, 2, 1, 3), index)
    if cache.ndim == 3:
        return jax.lax.dynamic_update_slice(cache, new[0].transpose(1, 2, 0), (0, 0, index))
    return jax.lax.dynamic_update_slice(cache, new.transpose(0, 2, 1, 3), (0, 0, index, 0))


class Attention(nn.Module):
    config: GPTConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache=None, cache_index=None):
        cfg = self.config
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        dt = cfg.compute_dtype

        def project(name, heads, heads_axis):
            w = self.param(name, _init(cfg.init_std, ("embed", heads_axis, "head_dim")),
                           (d, heads, hd), cfg.weight_dtype)
            # 2-D matmul: XLA:CPU copies a 3-D weight at every decode step for the einsum form
            y = (x @ w.reshape(d, heads * hd).astype(dt)).reshape(*x.shape[:2], heads, hd)
            y = lora_update(self, name, x, y)
            if cfg.use_bias:
                y = y + self.param(f"{name}_bias", _zeros((heads_axis, "head_dim")),
                                   (heads, hd), cfg.weight_dtype).astype(dt)
            return constrain(y, ("act_batch", "act_length", f"act_{heads_axis}", None), self.mesh)

        q = project("q", h, "heads")
        k = project("k", kv, "kv_heads")
        v = project("v", kv, "kv_heads")
        if cfg.family == "llama":
            q = rotary(q, positions, cfg.rope_theta)
            k = rotary(k, positions, cfg.rope_theta)

        new_cache = None
        if mask is None:  # plain causal window on a GPU: the fused kernel (see GPTConfig.attention)
            out = jax.nn.dot_product_attention(q, k, v, scale=hd**-0.5, is_causal=True)
            return self._out(out.astype(dt)), None
        if layer_cache is None:
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, D]
        else:
            new_cache = {"k": write_cache(layer_cache["k"], k, cache_index),
                         "v": write_cache(layer_cache["v"], v, cache_index)}
            k, v = new_cache["k"].astype(dt), new_cache["v"].astype(dt)
        out = (attend_slots_minor if k.ndim == 3 else attend)(q, k, v, mask)
        return self._out(out), new_cache

    def _out(self, out):
        """Attention output [B, T, H, D] -> the output projection [B, T, d_model]."""
        cfg = self.config
        dt = cfg.compute_dtype
        out = constrain(out, ("act_batch", "act_length", "act_heads", None), self.mesh)
        h, hd, d = cfg.n_heads, cfg.head_dim, cfg.d_model
        proj_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        wo = self.param("o", _init(proj_std, ("heads", "head_dim", "embed")), (h, hd, d),
                        cfg.weight_dtype)
        flat = out.reshape(*out.shape[:2], h * hd)
        y = lora_update(self, "o", flat, flat @ wo.reshape(h * hd, d).astype(dt))
        if cfg.use_bias:
            y = y + self.param("o_bias", _zeros(("embed",)), (d,), cfg.weight_dtype).astype(dt)
        return y


class MLP(nn.Module):
    config: GPTConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d, f, dt = cfg.d_model, cfg.ff_dim, cfg.compute_dtype
        proj_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5

        def dense_in(name):
            w = self.param(name, _init(cfg.init_std, ("embed", "mlp")), (d, f), cfg.weight_dtype)
            y = lora_update(self, name, x, jnp.einsum("btd,df->btf", x, w.astype(dt)))
            if cfg.use_bias:
                y = y + self.param(f"{name}_bias", _zeros(("mlp",)), (f,), cfg.weight_dtype).astype(dt)
            return constrain(y, ("act_batch", "act_length", "act_mlp"), self.mesh)

        if cfg.family == "gpt2":
            hidden = jax.nn.gelu(dense_in("fc"), approximate=True)
        else:
            hidden = jax.nn.silu(dense_in("gate")) * dense_in("up")
        w_out = self.param("proj", _init(proj_std, ("mlp", "embed")), (f, d), cfg.weight_dtype)
        y = jnp.einsum("btf,fd->btd", hidden, w_out.astype(dt))
        y = lora_update(self, "proj", hidden, y)
        if cfg.use_bias:
            y = y + self.param("proj_bias", _zeros(("embed",)), (d,), cfg.weight_dtype).astype(dt)
        return y


class Block(nn.Module):
    """Pre-norm transformer layer. Signature fits `nn.scan`: (carry, *xs) -> (carry, ys)."""

    config: GPTConfig
    mesh: Mesh | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache, cache_index):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        attn_out, new_cache = Attention(cfg, self.mesh, name="attn")(
            Norm(cfg, name="ln_1")(x), positions, mask, layer_cache, cache_index
        )
        x = x + drop(attn_out)
        x = x + drop(MLP(cfg, self.mesh, name="mlp")(Norm(cfg, name="ln_2")(x)))
        x = constrain(x, ("act_batch", "act_length", "act_embed"), self.mesh)
        return x, new_cache


def attention_mask(positions, segment_ids=None, cache_valid=None, cache_index=None, t=None):
    """[B, T, S] boolean mask: causal, within a packed segment, and not onto padding.

    Without a cache, S == T and causality is by position in the sequence. With a cache, S is the
    cache length; a query in slot `cache_index + i` sees valid slots up to and including its own.
    """
    if cache_valid is None:
        t = positions.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        if segment_ids is None:
            return jnp.broadcast_to(causal, (positions.shape[0], t, t))
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        return causal & same & (segment_ids[:, None, :] != 0)
    s = cache_valid.shape[1]
    q_slot = cache_index + jnp.arange(t)
    causal = jnp.arange(s)[None, :] <= q_slot[:, None]  # [T, S]
    return causal[None] & cache_valid[:, None, :]


def embed(config: GPTConfig, params, tokens, positions):
    """Token (+ learned position, gpt2) embeddings: tokens, positions [B, T] -> [B, T, D] in the
    compute dtype. `params` holds "wte" (and "wpe" for gpt2): the GPT's top-level params."""
    x = jnp.take(params["wte"], tokens, axis=0).astype(config.compute_dtype)
    if config.family == "gpt2":
        x = x + jnp.take(params["wpe"], positions, axis=0).astype(config.compute_dtype)
    return x


def lm_logits(config: GPTConfig, params, hidden):
    """Final-norm output [B, T, D] -> float32 logits [B, T, V] through the output head ("wte" when
    tied, else "lm_head", from the GPT's top-level params)."""
    dt = config.compute_dtype
    if config.tied:
        return jnp.einsum("btd,vd->btv", hidden, params["wte"].astype(dt),
                          preferred_element_type=jnp.float32)
    return jnp.einsum("btd,dv->btv", hidden, params["lm_head"].astype(dt),
                      preferred_element_type=jnp.float32)


class GPT(nn.Module):
    """Decoder-only transformer. See the module docstring for the families; decoding with a KV
    cache runs the same pieces in `gpt_jax.sampling`."""

    config: GPTConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, tokens, positions=None, segment_ids=None, deterministic: bool = True,
                 return_hidden: bool = False, logits_from: int = 0):
        """tokens [B, T] int -> logits [B, T, V] float32 (or (logits, hidden)).

        positions:       [B, T] position ids (default arange).
        segment_ids:     [B, T] packed-example ids (0 = padding); attention stays within a segment.
        logits_from:     logits only for positions [logits_from:] ([B, T - logits_from, V]); the
                         hidden states stay whole (PPO scores response tokens only).
        """
        cfg = self.config
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        fused = segment_ids is None and (
            cfg.attention == "fused" or (cfg.attention == "auto" and jax.default_backend() == "gpu"))
        mask = None if fused else attention_mask(positions, segment_ids)

        emb = {"wte": self.param("wte", _init(cfg.init_std, ("vocab", "embed")),
                                 (cfg.vocab_size, cfg.d_model), cfg.weight_dtype)}
        if cfg.family == "gpt2":
            emb["wpe"] = self.param("wpe", _init(cfg.init_std / 2, ("pos", "embed")),
                                    (cfg.max_seq_len, cfg.d_model), cfg.weight_dtype)
        x = embed(cfg, emb, tokens, positions)
        x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
        x = constrain(x, ("act_batch", "act_length", "act_embed"), self.mesh)

        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy],
                             prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, self.mesh, deterministic, name="blocks")
            x, _ = stack(x, positions, mask, None, None)  # no cache: see `sampling`
        else:
            for i in range(cfg.n_layers):
                x, _ = block(cfg, self.mesh, deterministic, name=f"block_{i}")(
                    x, positions, mask, None, None)

        hidden = Norm(cfg, name="ln_f")(x)
        read = hidden[:, logits_from:] if logits_from else hidden
        head = dict(emb)
        if not cfg.tied:
            head["lm_head"] = self.param("lm_head", _init(cfg.init_std, ("embed", "vocab")),
                                         (cfg.d_model, cfg.vocab_size), cfg.weight_dtype)
        logits = lm_logits(cfg, head, read)
        logits = constrain(logits, ("act_batch", "act_length", "act_vocab"), self.mesh)
        return (logits, hidden) if return_hidden else logits
