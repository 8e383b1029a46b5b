"""Many LoRA adapters on one base model in one batch: each row of a serving step goes through its
own adapter (or none) while the base weights stay one shared copy. The per-row low-rank path of
S-LoRA / Punica ("BGMV"): row i computes x W + (x A_i) B_i, never W + A_i B_i.

`AdapterTable` stacks every adapter's A and B per layer and target weight. Index 0 is "no
adapter" (zeros); ranks are zero-padded to the largest (exact: a padded column of A meets a zero
row of B); alpha / r is folded into B; a target one adapter lacks is zeros for it. An adapter's
trained token rows (`lora.LoRAConfig.token_ids`: embedding rows and output columns, as deltas)
are stacked the same way, ids padded with -1, and its norm deltas (`LoRAConfig.norms`) per norm as
[N + 1, D] (zeros: none). `gather(table.device, ids)` picks each row's part
inside the jitted step; `lora_update` (called by the model's projections) adds (x A) B wherever
the `lora` variable collection holds a weight's pair (a norm adds its row's delta to its scale the
same way), `token_embed` / `head_update` add a row's token deltas to its embeddings and its
output-head pair and token columns to its logits.

    table = AdapterTable.build(config, {"math": load_adapter("math.safetensors")})
    lora = (table.device, np.array([0, 1, 1, 0], np.int32))   # rows 1 and 2 use "math"
    run_blocks(params, config, ..., lora=gather(*lora))
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.lora import TARGET_AXES, TOP_LEVEL_TARGETS, Adapter, _get, _leaves, norm_paths

_MODULE = {"q": "attn", "k": "attn", "v": "attn", "o": "attn",
           "gate": "mlp", "up": "mlp", "fc": "mlp", "proj": "mlp"}


def layer_pairs(adapter: Adapter, n_layers: int) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per layer {target: (A [*in, r], B [r, *out] * scale)}, from the scanned layout (`blocks`,
    a leading layers axis) or the unscanned one (`block_<i>`)."""
    out: list[dict] = [{} for _ in range(n_layers)]
    for path, a in _leaves(adapter.params):
        if path[-1] != "A":
            continue
        name = path[-2]
        if name in TOP_LEVEL_TARGETS and len(path) == 2:
            continue  # the output head's pair: `head_table`
        b = np.asarray(_get(adapter.params, (*path[:-1], "B")), np.float32) * adapter.config.scale
        layers = per_layer(path, n_layers)
        if layers is None:
            raise ValueError(f"adapter path {'/'.join(path)}: not under blocks or block_<i>")
        for i, at in layers:
            out[i][name] = (np.asarray(a, np.float32)[at], b[at])
    return out


def per_layer(path: tuple[str, ...], n_layers: int) -> list[tuple[int, tuple]] | None:
    """(layer, index into the leaf) for each layer a leaf at `path` holds: every layer along its
    leading axis under the scanned `blocks`, its own under `block_<i>`; None elsewhere."""
    if path[0] == "blocks":
        return [(i, (i,)) for i in range(n_layers)]
    if m := re.fullmatch(r"block_(\d+)", path[0]):
        return [(int(m.group(1)), ())]
    return None


@dataclasses.dataclass
class AdapterTable:
    names: tuple[str, ...]  # index i + 1 is names[i]; 0 is no adapter
    layers: list  # per layer {"attn": {"q_a": [N + 1, *in, R], "q_b": [N + 1, R, *out]}, "mlp": ...}
    rank: int
    # {"ids": [N + 1, n] (-1: none), "wte": [N + 1, n, D], "lm_head": [N + 1, D, n]}, or None
    # when no adapter trains token rows
    tokens: dict | None = None
    # the output head's pairs {"a": [N + 1, D, R], "b": [N + 1, R, V]}, or None when no adapter
    # targets `lm_head`
    head: dict | None = None

    # the final norm's deltas {"scale": [N + 1, D]} (the layers' are in `layers`), or None when
    # no adapter trains the norms
    final_norm: dict | None = None

    @property
    def device(self) -> dict:
        """What a step gathers per row: {"layers": ..., "tokens" / "head" / "ln_f": when some
        adapter has them}."""
        extra = {k: v for k, v in (("tokens", self.tokens), ("head", self.head),
                                   ("ln_f", self.final_norm)) if v}
        return {"layers": self.layers, **extra}

    @classmethod
    def build(cls, config, adapters: dict[str, Adapter], weight_shapes: dict[str, tuple]):
        """`weight_shapes`: {target: (in shape, out shape)} of one layer's base weights."""
        names = tuple(adapters)
        pairs = [layer_pairs(adapters[n], config.n_layers) for n in names]
        rank = max((a.config.rank for a in adapters.values()), default=1)
        targets = sorted({t for per in pairs for layer in per for t in layer})
        layers = []
        for i in range(config.n_layers):
            layer: dict = {}
            for t in targets:
                stacked = stack_pairs([per[i].get(t) for per in pairs], *weight_shapes[t], rank)
                mod = layer.setdefault(_MODULE[t], {})
                mod[f"{t}_a"], mod[f"{t}_b"] = stacked["a"], stacked["b"]
            layers.append(layer)
        listed = [adapters[n] for n in names]
        final_norm = None
        if any(a.config.norms for a in listed):
            norms = [layer_norms(a, config.n_layers) for a in listed]
            for i, layer in enumerate(layers):
                for module in sorted({m for per in norms for m in per[i]}):
                    layer[module] = stack_norms([per[i].get(module) for per in norms])
            final_norm = stack_norms([per[-1].get("ln_f") for per in norms])
        return cls(names, layers, rank, token_table(listed), head_table(listed, rank), final_norm)

    def index(self, name: str | None) -> int:
        if name is None:
            return 0
        if name not in self.names:
            raise KeyError(f"no adapter {name!r}; loaded: {list(self.names) or 'none'}")
        return self.names.index(name) + 1


def layer_norms(adapter: Adapter, n_layers: int) -> list[dict[str, dict[str, np.ndarray]]]:
    """An adapter's norm deltas per layer ({"ln_1": {"scale": [D]}, ...}), then the final
    norm's ({"ln_f": ...}) as one more entry; empty dicts when it trains no norms."""
    out: list[dict] = [{} for _ in range(n_layers + 1)]
    if not adapter.config.norms:
        return out
    for path, delta in norm_paths(adapter.params["norms"]):
        delta = np.asarray(delta, np.float32)
        for i, at in per_layer(path, n_layers) or [(n_layers, ())]:  # else: the final norm
            out[i].setdefault(path[-2], {})[path[-1]] = delta[at]
    return out


def stack_norms(per_adapter: list) -> dict:
    """{leaf: [N + 1, D]} of N adapters' deltas of one norm (None: that adapter has none)."""
    first = next(p for p in per_adapter if p is not None)
    return {leaf: jnp.asarray(np.stack([np.zeros_like(x)] + [
        np.zeros_like(x) if p is None else p[leaf] for p in per_adapter]))
        for leaf, x in first.items()}


def token_table(adapters: list[Adapter]) -> dict | None:
    """Every adapter's token deltas stacked (index 0 and adapters without them: no ids)."""
    have = [a for a in adapters if a.config.token_ids]
    if not have:
        return None
    n = max(len(a.config.token_ids) for a in have)
    d = have[0].params["tokens"]["wte"].shape[1]
    ids = np.full((len(adapters) + 1, n), -1, np.int32)
    wte = np.zeros((len(adapters) + 1, n, d), np.float32)
    head = np.zeros((len(adapters) + 1, d, n), np.float32)
    for j, a in enumerate(adapters):
        k = len(a.config.token_ids)
        if k:
            delta = a.params["tokens"]
            ids[j + 1, :k] = a.config.token_ids
            wte[j + 1, :k] = np.asarray(delta["wte"], np.float32)
            # a tied head is the embedding itself: its output columns move with the rows
            head[j + 1, :, :k] = (np.asarray(delta["lm_head"], np.float32) if "lm_head" in delta
                                  else np.asarray(delta["wte"], np.float32).T)
    return {"ids": jnp.asarray(ids), "wte": jnp.asarray(wte), "lm_head": jnp.asarray(head)}


def stack_pairs(pairs: list, ins: tuple, outs: tuple, rank: int) -> dict:
    """{"a": [N + 1, *ins, R], "b": [N + 1, R, *outs]} of N adapters' (A, B * scale) pairs of one
    weight (None: that adapter lacks it), index 0 none, ranks zero-padded to R."""
    a = np.zeros((len(pairs) + 1, *ins, rank), np.float32)
    b = np.zeros((len(pairs) + 1, rank, *outs), np.float32)
    for j, pair in enumerate(pairs):
        if pair is not None:
            pa, pb = pair
            a[j + 1, ..., : pa.shape[-1]] = pa
            b[j + 1, : pb.shape[0]] = pb
    return {"a": jnp.asarray(a), "b": jnp.asarray(b)}


def head_table(adapters: list[Adapter], rank: int) -> dict | None:
    """Every adapter's output-head pair stacked like a layer's (zeros where it has none)."""
    pairs = [(np.asarray(a.params["lm_head"]["A"], np.float32),
              np.asarray(a.params["lm_head"]["B"], np.float32) * a.config.scale)
             if "lm_head" in a.params else None for a in adapters]
    first = next((p for p in pairs if p is not None), None)
    if first is None:
        return None
    return stack_pairs(pairs, first[0].shape[:1], first[1].shape[-1:], rank)


def token_embed(rows: dict, tokens, x):
    """x [B, T, D] plus each row's embedding delta where its token is one of its adapter's ids
    (`rows`: the gathered token table, ids [B, n])."""
    hit = (tokens[:, :, None] == rows["ids"][:, None, :]).astype(x.dtype)  # [B, T, n]
    return x + jnp.einsum("btn,bnd->btd", hit, rows["wte"].astype(x.dtype))


def head_update(rows: dict, hidden, logits, vocab: int):
    """logits [B, T, V] plus each row's output-head updates (`rows`: a gathered
    `AdapterTable.device`): its low-rank pair, (hidden A) B, and its token columns' deltas,
    (hidden @ delta) scattered onto its adapter's ids (for a tied head, the embedding rows')."""
    h = hidden.astype(jnp.float32)
    if "head" in rows:
        u = jnp.einsum("btd,bdr->btr", h, rows["head"]["a"])
        logits = logits + jnp.einsum("btr,brv->btv", u, rows["head"]["b"])
    if "tokens" in rows:
        u = jnp.einsum("btd,bdn->btn", h, rows["tokens"]["lm_head"])
        onto = jax.nn.one_hot(rows["tokens"]["ids"], vocab, dtype=jnp.float32)  # -1: all zeros
        logits = logits + jnp.einsum("btn,bnv->btv", u, onto)
    return logits


def weight_shapes(layer_params: dict) -> dict[str, tuple[tuple, tuple]]:
    """{target: (in shape, out shape)} of one unscanned layer's weights (`block_0`)."""
    out = {}
    for module in ("attn", "mlp"):
        for name, w in layer_params.get(module, {}).items():
            if name in TARGET_AXES:
                n_in, n_out = TARGET_AXES[name]
                out[name] = (tuple(w.shape[:n_in]), tuple(w.shape[n_in:n_in + n_out]))
    return out


def gather(layers, ids):
    """Each row's adapter pairs: per layer, every [N + 1, ...] array indexed by ids [B]."""
    return jax.tree.map(lambda x: jnp.take(x, ids, axis=0), layers)


def lora_update(module, name: str, x, y):
    """y + (x A) B for weight `name` when the module's `lora` variable collection holds its
    per-row pair: A [B, *in, r], B [B, r, *out], alpha / r folded into B (`gather`:
    each row of a serving batch through its own adapter, on one copy of the base weights).
    x [B, T, *in] flattened to [B, T, in], y [B, T, *out]. Without the collection (training,
    every program without adapters) y is returned as it is."""
    if not module.has_variable("lora", f"{name}_a"):
        return y
    a, b = module.get_variable("lora", f"{name}_a"), module.get_variable("lora", f"{name}_b")
    rows, rank = a.shape[0], a.shape[-1]
    u = jnp.einsum("bti,bir->btr", x.reshape(*x.shape[:2], -1),
                   a.reshape(rows, -1, rank).astype(x.dtype))
    delta = jnp.einsum("btr,bro->bto", u, b.reshape(rows, rank, -1).astype(x.dtype))
    return y + delta.reshape(y.shape).astype(y.dtype)
